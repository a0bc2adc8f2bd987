"""``serve``: run the model worker (:mod:`backend.worker.server`)."""

from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from backend.worker.server import read_token, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    token = read_token(args.token, args.token_file)
    serve(
        args.model, args.space, host=args.host, port=args.port, db_path=args.db, token=token,
        device=args.device, cache=args.cache, trust_remote_code=args.trust_remote_code, compile=args.compile,
        precision=args.precision,
    )  # fmt: skip
    return 0
