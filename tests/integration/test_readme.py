"""The README's first Python example runs as written (from the repository root) and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_prints_a_capped_pirate_reply_and_the_cap_log(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    # The example exactly as written, then one line that reports what it kept (the reply's token ids).
    code = block.group(1) + "\nprint('REPLY_IDS', reply_ids)\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed, _, ids_line = done.stdout.rstrip("\n").rpartition("\n")
    reply_ids = [int(x) for x in re.findall(r"\d+", ids_line.removeprefix("REPLY_IDS"))]
    # The prompt, tokenized here by the chat template itself (not by backend.models.chat).
    messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}]
    prompt = smol_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    eos = smol_tokenizer.eos_token_id
    assert 0 < len(reply_ids) <= 128 and eos not in reply_ids  # default Sampling: at most 128 new tokens, EOS cut off
    # The cap ran over every position fed to the model: the prompt, then each new token but the last (and the last
    # one too when the model went on to emit EOS, which is not kept).
    fed = len(prompt) + len(reply_ids) - (1 if len(reply_ids) == 128 else 0)
    assert printed == f"{smol_tokenizer.decode(reply_ids)} torch.Size([1, {fed}])"
    # Greedy decoding of the embedded model is deterministic: with this system prompt it answers in character.
    assert printed.startswith("(I'm Captain Blackbeard, infamous for his ruthless")
