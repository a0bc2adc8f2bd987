"""Commands that only need a model: ``model-info`` and ``chat`` (in the terminal)."""

from __future__ import annotations

import argparse
import json
import sys

from backend.cli.args import load


def cmd_model_info(args: argparse.Namespace) -> int:
    info = load(args).info.to_dict()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from backend.decode.generate import Sampling, generate_reply

    loaded = load(args)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, greedy=not args.sample, seed=args.seed)
    turns: list[dict[str, str]] = []
    prompts = [args.prompt] if args.prompt else None
    print(
        f"{loaded.info.name}: {loaded.info.n_layers} layers x {loaded.info.hidden}. Empty line or Ctrl-D to quit.",
        file=sys.stderr,
    )
    while True:
        if prompts is not None:
            if not prompts:
                return 0
            text = prompts.pop()
        else:
            try:
                text = input("you> ")
            except EOFError:
                return 0
            if not text.strip():
                return 0
        turns.append({"role": "user", "content": text})

        def show(token: int) -> None:
            print(loaded.tokenizer.decode([token], skip_special_tokens=True), end="", flush=True)

        _, new = generate_reply(loaded, turns, system=args.system, sampling=sampling, on_token=show)
        print()
        turns.append({"role": "assistant", "content": loaded.tokenizer.decode(new, skip_special_tokens=True)})
