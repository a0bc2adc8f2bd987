"""``serve``: run the model worker (:mod:`backend.worker.server`) until SIGINT (exit code 130) or SIGTERM (0)."""

from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from backend.errors import PersonaSpaceError
    from backend.worker.server import read_token, serve

    if args.db is not None and not str(args.db).strip():
        # an empty --db must not fall back to the shared default database, which may be another worker's
        raise PersonaSpaceError("--db needs a file path (leave --db out for the default in the cache folder)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not 1 <= args.batch_rows <= 16:
        raise PersonaSpaceError(f"--batch-rows must be 1-16, got {args.batch_rows}")
    token = read_token(args.token, args.token_file)
    return serve(
        args.model, args.space, host=args.host, port=args.port, db_path=args.db, token=token,
        device=args.device, cache=args.cache, trust_remote_code=args.trust_remote_code, compile=args.compile,
        precision=args.precision, cap=args.cap, batch_rows=args.batch_rows,
    )  # fmt: skip
