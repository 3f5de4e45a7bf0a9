"""What a chat target may want to know about a request besides its messages."""

from __future__ import annotations

from dataclasses import dataclass

from surge.serving.target import Hints


@dataclass(slots=True, eq=False)
class Asked:
    hints: Hints  # headers (decided tenant and priority), the OpenAI `user`
    prompt_chars: int
    prompt_tokens: int  # counted by the model's tokenizer, or estimated (chars/4)
    prompt: str = ""  # the messages as text: kept only where a review item needs it
