"""Where each assistant message's own tokens are, found another way than the code under test (an oracle)."""

from __future__ import annotations


def independent_spans(tokenizer, conversation):  # type: ignore[no-untyped-def]
    """Each assistant turn's content tokens found without offsets: the prompt that precedes the turn (the chat
    template's own tokenization, generation prompt included) gives the start, the content tokenized alone the end."""
    spans = []
    for k, message in enumerate(conversation):
        if message["role"] == "assistant":
            start = len(
                tokenizer.apply_chat_template(conversation[:k], add_generation_prompt=True, tokenize=True, return_dict=False)
            )
            spans.append((start, start + len(tokenizer(message["content"], add_special_tokens=False)["input_ids"])))
    return spans
