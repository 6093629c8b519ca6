"""Tools whose outputs are part of the latent's state but are not the policy's actions.

A tool reads the latent written so far and may append tokens to it: the paper's calculator (§4.4) appends " 2" when
the policy writes "6 - 4 =".  For the GFlowNet those tokens are deterministic transitions, not choices: the policy
has no probability to assign to them, and it cannot stop while the tool is writing.  gfn_trl expresses this as a
rule of the constrained policy (`LatentConstraints.tool`): at a state where the tool appends token t, every action
but t is removed from the policy's support, so

* the sampler can only emit t (the tool's output enters the state, and the next policy step conditions on it);
* the teacher-forced pass gives log q(t | s) = 0 exactly and log q(⊤ | s) = -inf: the token contributes nothing to
  log q(Z), and the state is non-terminable, so the loss skips windows that start or end there;
* a replayed latent gets the same forced positions, because they are recomputed from its tokens by the same rule.
  (The authors' code re-scores replayed arithmetic latents without the tool; we do not.)

A tool is any object with `forced_tokens(latent) -> list[int]`: for each state s_0 .. s_n of the token list
`latent` (n = len(latent)), the token the tool appends next there, or -1 where the policy acts.  It must be a pure
function of the tokens, so that sampling, the loss and replay agree.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from .tokenization import encode_continuation


class Tool(Protocol):
    def forced_tokens(self, latent: Sequence[int]) -> list[int]: ...


class TextTool:
    """A tool that fires when the policy emits a token whose text is exactly `trigger`, spaces around it ignored.

    For the arithmetic calculator (`trigger="="`) that is "=" and " =", the two tokens the authors' calculator fires
    on (GFNOrg/gfn-lm-tuning: the last ids of `encode(" =")` and `encode("=")`); tokens that merely end in "=" ("==",
    " +=", " -=", "====" in SmolLM2's vocabulary) do not fire it.  `compute(text)` receives the latent's text up to and
    including that token and returns the text to append, or None to append nothing.  The text is tokenized as a
    continuation in the middle of a sequence (`gfn_trl.tokenization.encode_continuation`: no space piece or special
    token added), so that the latent decodes to the policy's text followed by exactly that text.  Tokens the tool
    appends never fire it again.

    Raises:
        ValueError: an empty `trigger`, or no token of the tokenizer is the trigger.
    """

    def __init__(self, tokenizer, trigger: str, compute: Callable[[str], str | None]):
        if not trigger:
            raise ValueError("TextTool needs a non-empty trigger string (e.g. '=').")
        self.tokenizer, self.trigger, self.compute = tokenizer, trigger, compute
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
        special = set(tokenizer.all_special_ids)
        self._fires = [i not in special and t.strip(" ") == trigger for i, t in enumerate(texts)]
        if not any(self._fires):
            raise ValueError(f"No token of the tokenizer is the trigger {trigger!r} (spaces around it ignored): the "
                             "tool could never fire.")
        self._encoded: dict[str, tuple[int, ...]] = {}
        # The sampler asks for the forced tokens of every prefix at every step: remember recent outputs.
        self._output = functools.lru_cache(maxsize=2**16)(self._compute_output)

    def fires(self, token_id: int) -> bool:
        return 0 <= token_id < len(self._fires) and self._fires[token_id]

    def encode(self, text: str) -> tuple[int, ...]:
        """`text` as latent tokens: `encode_continuation(tokenizer, text)` (cached)."""
        if text not in self._encoded:
            self._encoded[text] = tuple(encode_continuation(self.tokenizer, text))
        return self._encoded[text]

    def output(self, latent: Sequence[int]) -> tuple[int, ...]:
        """The tokens the tool appends after `latent`, whose last token fired it."""
        return self._output(tuple(latent))

    def _compute_output(self, latent: tuple[int, ...]) -> tuple[int, ...]:
        text = self.tokenizer.decode(list(latent), clean_up_tokenization_spaces=False)
        result = self.compute(text)
        return self.encode(result) if result else ()

    def tokenize(self, text: str) -> list[int]:
        """`text` as the latent the sampler would hold: the policy's pieces up to each trigger are tokenized as
        continuations (`encode`), and where the text goes on with the tool's output, that output is the tool's tokens
        (e.g. a gold rationale " 6 - 0 = 6, 6 - 4 = 2" -> tokens(" 6 - 0 =") + tool(" 6") + tokens(", 6 - 4 =") +
        tool(" 2"))."""
        ids: list[int] = []
        while True:
            cut = text.find(self.trigger)
            if cut < 0:
                return ids + list(self.encode(text)) if text else ids
            ids += self.encode(text[: cut + len(self.trigger)])
            text = text[cut + len(self.trigger) :]
            result = self.compute(self.tokenizer.decode(ids, clean_up_tokenization_spaces=False))
            if result and text.startswith(result):
                ids += self.encode(result)
                text = text[len(result) :]

    def forced_tokens(self, latent: Sequence[int]) -> list[int]:
        latent = list(latent)
        forced, pending = [], deque()
        for k in range(len(latent) + 1):
            forced.append(pending[0] if pending else -1)  # at state s_k
            if k == len(latent):
                break
            token = latent[k]
            if pending:
                # A token that differs from the tool's output breaks the latent (only latents written outside the
                # sampler can): the constrained policy gives it probability 0, `LatentConstraints.admits` rejects
                # such latents and `seed_replay_buffer` skips them.
                if token == pending[0]:
                    pending.popleft()
                else:
                    pending.clear()
            elif self.fires(token):
                pending.extend(self.output(latent[: k + 1]))
        return forced
