"""What is scored is the text the user meant, for every kind of real tokenizer (issue 11).

The reward is computed on `tokens(reward_prompt) + Z + tokens(suffix)`.  For each tokenizer kind of
`gfn_trl.testing.TOKENIZER_KINDS` (byte-level BPE, SentencePiece-style Llama legacy and not, the Llama-2 tokenizer.json
format, BOS-adding with a BOS-writing chat template, EOS-appending, the real SmolLM2 tokenizer), every piece of text
the library tokenizes must decode to exactly what was written, in place: prompts with BOS once (if the tokenizer adds
one) and no trailing EOS, suffixes / gold latents / tool outputs / scored texts / the stop token with no space piece or
special token in between.  Real tokenizers and tiny real models, no mocks.
"""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from gfn_trl import GFlowNetConfig, GFlowNetTrainer
from gfn_trl.baselines import sft_dataset
from gfn_trl.data import tokenize_dataset
from gfn_trl.evaluation import score_texts
from gfn_trl.models import resolve_stop_token_id
from gfn_trl.sampling import left_pad, sample_latents
from gfn_trl.tasks import arithmetic, continuation, subjectivity
from gfn_trl.testing import TOKENIZER_KINDS, tiny_model, tiny_tokenizer, tokenizer_kind
from gfn_trl.tokenization import encode_continuation, encode_prompt, render_prompt

SENTIMENT = {"prompt": "Review: The movie was bad\nRationale:", "reward_prompt": "The movie was bad",
             "suffix": ", so it is bad.", "contrast_suffix": ", so it is good."}
STORY = {  # the README's infilling row
    "prompt": "Beginning: Tom got a puppy. It was very small. He named it Max.\nEnding: Max grew up to be a big dog.\n"
              "Middle:",
    "reward_prompt": "Tom got a puppy. It was very small. He named it Max.",
    "suffix": " Max grew up to be a big dog.",
    "contrast_suffix": "\nThe end.",  # a piece that starts with a newline (merges with a "\n" context)
}
LATENT = " He fed him every day."  # a latent's text, as the policy would write it
CHAT = [{"role": "user", "content": "Is the movie good?"}]
CHAT_KINDS = ["bos_chat", "smollm2"]  # the kinds with a chat template


def _decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _front(tok) -> list[int]:
    """The special tokens the tokenizer itself puts in front of a text (BOS), read off a plain encoding."""
    full, plain = tok("Hello")["input_ids"], tok("Hello", add_special_tokens=False)["input_ids"]
    return full[: len(full) - len(plain)] if full[len(full) - len(plain) :] == plain else full[:1]


def _rows(tok, rows, **kw):
    model = tiny_model("llama", len(tok))
    return list(tokenize_dataset(Dataset.from_list(rows), tok, model.config, 8, **kw))


# ---------------------------------------------------------------------------------------------------------------------
# The exact failing examples of the issue


@pytest.mark.parametrize("kind", ["llama_legacy", "llama", "llama2_json", "bos_chat"])
def test_sentencepiece_suffix_gets_no_space_piece(kind):
    """`", so it is bad."` after "The movie was bad" was scored as "bad , so it is bad." (a "▁" before ",")."""
    tok = tokenizer_kind(kind)
    assert tok.convert_ids_to_tokens(tok(", so it is bad.", add_special_tokens=False)["input_ids"])[0] == "▁"
    (row,) = _rows(tok, [SENTIMENT])
    assert _decode(tok, row["reward_prompt_ids"] + row["suffix_ids"]) == "The movie was bad, so it is bad."
    assert tok.convert_ids_to_tokens(row["suffix_ids"])[0] == ","


def test_legacy_llama2_leading_space_suffix_is_one_piece():
    """Under the Llama-2 tokenizer.json format, " Max grew up" alone is "▁ ▁Max ...": two spaces in the reward."""
    tok = tokenizer_kind("llama2_json")
    assert tok.convert_ids_to_tokens(tok(" Max grew up", add_special_tokens=False)["input_ids"])[:2] == ["▁", "▁Max"]
    (row,) = _rows(tok, [STORY])
    assert tok.convert_ids_to_tokens(row["suffix_ids"])[0] == "▁Max"
    assert _decode(tok, row["reward_prompt_ids"] + row["suffix_ids"]) == STORY["reward_prompt"] + STORY["suffix"]


def test_eos_appending_tokenizer_prompt_does_not_end_with_the_stop():
    tok = tokenizer_kind("eos_appending")
    assert tok("The movie was bad")["input_ids"][-1] == tok.eos_token_id  # what the old code used as the prompt
    (row,) = _rows(tok, [SENTIMENT])
    for ids in (row["prompt_ids"], row["reward_prompt_ids"]):
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.eos_token_id not in ids
    with pytest.raises(ValueError, match="ends with the EOS token.*Remove the EOS"):
        _rows(tok, [{"prompt": "The movie was bad</s>"}])


def test_chat_template_that_writes_bos_gets_one_bos():
    tok = tokenizer_kind("bos_chat")
    text = render_prompt(tok, CHAT)
    assert text.startswith("<s>") and tok(text)["input_ids"][:2] == [tok.bos_token_id] * 2  # the old double BOS
    (row,) = _rows(tok, [{"prompt": CHAT, "reward_prompt": CHAT, "suffix": " Yes."}])
    for ids in (row["prompt_ids"], row["reward_prompt_ids"]):
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
    # the same text given as text (already rendered) gets one BOS too
    assert encode_prompt(tok, text) == row["prompt_ids"]


# ---------------------------------------------------------------------------------------------------------------------
# Every piece, every kind


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_dataset_pieces_decode_to_the_intended_text(kind):
    tok = tokenizer_kind(kind)
    front = _front(tok)
    rows = _rows(tok, [SENTIMENT, STORY])
    latent = encode_continuation(tok, LATENT)
    for src, row in zip([SENTIMENT, STORY], rows):
        for key in ("prompt", "reward_prompt"):
            ids = row[f"{key}_ids"]
            assert ids[: len(front)] == front  # BOS exactly once if the tokenizer adds one
            if front:
                assert ids.count(front[0]) == 1
            assert ids[-1] != tok.eos_token_id  # never a trailing EOS
            assert _decode(tok, ids) == src[key]
        r = row["reward_prompt_ids"]
        assert _decode(tok, r + row["suffix_ids"]) == src["reward_prompt"] + src["suffix"]
        assert _decode(tok, r + row["contrast_suffix_ids"]) == src["reward_prompt"] + src["contrast_suffix"]
        assert _decode(tok, r + latent + row["suffix_ids"]) == src["reward_prompt"] + LATENT + src["suffix"]
        assert _decode(tok, row["prompt_ids"] + latent) == src["prompt"] + LATENT


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_stop_token_is_the_written_text(kind):
    tok = tokenizer_kind(kind)
    (row,) = _rows(tok, [SENTIMENT])
    stop = resolve_stop_token_id(tok, ".")  # one token: "." mid-text, not "▁" + "."
    assert _decode(tok, row["reward_prompt_ids"] + encode_continuation(tok, " fine") + [stop]) == (
        "The movie was bad fine.")
    assert resolve_stop_token_id(tok, tok.eos_token) == tok.eos_token_id
    assert resolve_stop_token_id(tok, None) == tok.eos_token_id
    allowed = continuation.vocab_mask(tok)  # the continuation task's stop "." resolves the same way
    assert bool(allowed[stop])


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_gold_latents_and_tool_outputs_decode_in_place(kind):
    tok = tokenizer_kind(kind)
    problem = arithmetic.Problem((6, 4, 8), ("-", "+"))  # " 6 - 4 = 2, 2 + 8 = 10": two tool calls
    prompt_ids = encode_prompt(tok, "Question: 6 - 4 = ? Answer:")
    rationale = arithmetic.gold_rationale(problem)
    for tool in (None, arithmetic.calculator(tok)):
        gold = arithmetic.gold_latent(tok, problem, tool)
        assert _decode(tok, prompt_ids + gold) == "Question: 6 - 4 = ? Answer:" + rationale
    calc = arithmetic.calculator(tok)
    assert _decode(tok, prompt_ids + list(calc.encode(" 2"))) == "Question: 6 - 4 = ? Answer: 2"
    # SFT's gold latents (and the infill recipe's seeds, `encode_continuation` of the gold text)
    sft = sft_dataset(Dataset.from_list([{"prompt": STORY["prompt"], "gold": LATENT}]), tok, tok.eos_token_id, "gold")
    ids = sft[0]["input_ids"]
    assert ids[-1] == tok.eos_token_id and _decode(tok, ids[:-1]) == STORY["prompt"] + LATENT
    assert ids[:-1] == encode_prompt(tok, STORY["prompt"]) + encode_continuation(tok, LATENT)
    # subjectivity's label suffixes, from the tokenizer alone, are the data's suffix ids
    labels = subjectivity._label_suffix_ids({}, tok)
    lab = subjectivity.LABELS[0]
    assert labels[lab] == encode_continuation(tok, subjectivity.SUFFIX.format(label=lab))
    assert _decode(tok, encode_prompt(tok, "The movie was bad") + labels[lab]) == (
        "The movie was bad" + subjectivity.SUFFIX.format(label=lab))


@pytest.mark.parametrize("kind", [k for k in TOKENIZER_KINDS if k not in CHAT_KINDS])
def test_conversation_without_chat_template_is_refused(kind):
    tok = tokenizer_kind(kind)
    tok.chat_template = None
    with pytest.raises(ValueError, match="Row 0 .*no chat template.*chat_template"):
        _rows(tok, [{"prompt": CHAT}])


def test_conversation_rendered_as_trl_renders_it():
    tok = tokenizer_kind("smollm2")
    (row,) = _rows(tok, [{"prompt": CHAT}])
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert _decode(tok, row["prompt_ids"]) == _decode(tok, tok(rendered, add_special_tokens=False)["input_ids"])
    assert row["prompt_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]  # SmolLM2 adds no BOS
    assert tok.convert_ids_to_tokens(row["prompt_ids"][-4:]) == ["<|im_start|>", "ass", "istant", "Ċ"]
    # a final assistant message is continued, not closed
    cont = encode_prompt(tok, CHAT + [{"role": "assistant", "content": "I think"}])
    assert _decode(tok, cont).endswith("assistant\nI think")
    # chat_template_kwargs reach the template (SmolLM2's template ignores unknown ones; the BOS template reads none)
    sys = [{"role": "system", "content": "Be brief."}] + CHAT
    assert "Be brief." in _decode(tok, encode_prompt(tok, sys, {"unused_flag": True}))
    with pytest.raises(ValueError, match="role 'system'"):
        encode_prompt(tok, [{"role": "system", "content": "x"}])


# ---------------------------------------------------------------------------------------------------------------------
# The trainer, stepped, on each kind


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2,
                max_completion_length=3, learning_rate=1e-2, warmup_steps=0, logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    base.update(kw)
    return GFlowNetConfig(**base)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_trainer_steps_and_scores_the_intended_text(tmp_path, kind):
    tok = tokenizer_kind(kind)
    rows = [SENTIMENT, STORY]
    if kind in CHAT_KINDS:  # a conversational dataset
        rows = [{**SENTIMENT, "prompt": CHAT, "reward_prompt": CHAT}, {**STORY, "prompt": CHAT, "reward_prompt": CHAT}]
    model = tiny_model("llama", len(tok))
    trainer = GFlowNetTrainer(model, _config(tmp_path, stop_token="." if kind != "smollm2" else None),
                              train_dataset=Dataset.from_list(rows), processing_class=tok,
                              peft_config=LoraConfig(r=2))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    data = list(trainer.train_dataset)
    scored = score_texts(trainer.reward, tok, data, [[LATENT]] * len(data))
    for s, src in zip(scored, rows):
        r, z = s.row["reward_prompt_ids"], s.tokens[0]
        reward_text = render_prompt(tok, src["reward_prompt"])
        assert _decode(tok, r + z + s.row["suffix_ids"]) == _decode(tok, tok(reward_text)["input_ids"]) + (
            LATENT + src["suffix"])
        assert torch.isfinite(torch.tensor(s.log_likelihood)).all()


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_sampled_texts_read_as_they_follow_the_prompt(kind):
    """`decode_continuation` gives back the text `encode_continuation` encoded, leading space included, for every
    tokenizer kind; and the evaluation's texts (`score_tokens`, what samples.jsonl and the text metrics read) are
    those.  SentencePiece's decoder drops the space that starts a text, so a latent " the cat" was saved as "the
    cat"; byte-level BPE decodes it alone as it did before."""
    from gfn_trl.evaluation import score_tokens
    from gfn_trl.rewards import LikelihoodReward
    from gfn_trl.tokenization import decode_continuation

    tok = tokenizer_kind(kind)
    texts = [" the cat", "the cat", " 12 + 3 = 15", ".", " I", " a story. It ends"]
    for text in texts:
        assert decode_continuation(tok, encode_continuation(tok, text)) == text, text
    assert decode_continuation(tok, []) == ""
    if kind in ("byte_bpe", "eos_appending", "smollm2"):  # decoding alone was already right: nothing changes
        for text in texts:
            ids = encode_continuation(tok, text)
            assert decode_continuation(tok, ids) == tok.decode(ids, skip_special_tokens=True)
    row = next(iter(tokenize_dataset(Dataset.from_list([STORY]), tok, tiny_model("llama", len(tok)).config, 8,
                                     "eval")))
    stop = resolve_stop_token_id(tok, None)
    reward = LikelihoodReward(None, tiny_model("llama", len(tok)), stop, tok.pad_token_id or stop)
    (scored,) = score_tokens(reward, tok, [row], [[encode_continuation(tok, " the cat")]])
    assert scored.texts == [" the cat"]


# ---------------------------------------------------------------------------------------------------------------------
# Vocabulary mismatches


def test_padded_embedding_never_samples_ids_the_tokenizer_cannot_decode(tmp_path):
    tok = tokenizer_kind("llama")
    extra = 40
    model = tiny_model("llama", len(tok) + extra)
    trainer = GFlowNetTrainer(model, _config(tmp_path, max_completion_length=8), processing_class=tok,
                              train_dataset=Dataset.from_list([SENTIMENT]), peft_config=LoraConfig(r=2))
    allowed = trainer.constraints.allowed
    assert allowed is not None and allowed.shape[0] == len(tok) + extra and not allowed[len(tok):].any()
    ids, mask = left_pad([trainer.train_dataset[0]["prompt_ids"]] * 64, tok.pad_token_id, torch.device("cpu"))
    policy = trainer.accelerator.unwrap_model(trainer.model)
    z, lengths = sample_latents(policy.eval(), ids, mask, trainer.constraints, 50.0, tok.pad_token_id,
                                list(range(64)))  # temperature 50: near-uniform over what is allowed
    written = torch.cat([z[b, : int(lengths[b])] for b in range(64)])
    assert written.numel() > 100
    assert int(written.max()) < len(tok)
    # the same draws without the mask do reach the padding (the check above could fail)
    from gfn_trl.sampling import LatentConstraints

    loose = LatentConstraints(trainer.constraints.stop_token_id, 8, 1, None)
    z2, l2 = sample_latents(policy, ids, mask, loose, 50.0, tok.pad_token_id, list(range(64)))
    assert int(torch.cat([z2[b, : int(l2[b])] for b in range(64)]).max()) >= len(tok)


def test_embedding_smaller_than_the_tokenizer_is_refused(tmp_path):
    tok = tokenizer_kind("byte_bpe")
    with pytest.raises(ValueError, match=r"embedding has .* rows but the tokenizer has .*resize_token_embeddings"):
        GFlowNetTrainer(tiny_model("gpt2", len(tok) - 5), _config(tmp_path), processing_class=tok,
                        train_dataset=Dataset.from_list([SENTIMENT]), peft_config=LoraConfig(r=2))


def test_reward_model_with_another_vocabulary_is_refused(tmp_path):
    tok = tokenizer_kind("llama")
    other = tokenizer_kind("byte_bpe")
    with pytest.raises(ValueError, match=r"reward model's vocabulary .* differs from the policy's.*same tokenizer"):
        GFlowNetTrainer(tiny_model("llama", len(tok)), _config(tmp_path), processing_class=tok,
                        train_dataset=Dataset.from_list([SENTIMENT]),
                        peft_config=LoraConfig(r=2), reward_model=tiny_model("llama", len(tok) + 7))
    # by name: its own tokenizer is compared entry by entry (here: as many entries, other tokens)
    folder = tmp_path / "reward"
    tiny_model("llama", len(tok)).save_pretrained(folder)
    other.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"reward model's tokenizer .* differs from the policy's"):
        GFlowNetTrainer(tiny_model("llama", len(tok)), _config(tmp_path, reward_model_name_or_path=str(folder)),
                        processing_class=tok,
                        train_dataset=Dataset.from_list([SENTIMENT]), peft_config=LoraConfig(r=2))
    # the same tokenizer with a differently padded embedding is accepted by name
    same = tmp_path / "same"
    tiny_model("llama", len(tok) + 16).save_pretrained(same)
    tok.save_pretrained(same)
    trainer = GFlowNetTrainer(tiny_model("llama", len(tok)), _config(tmp_path, reward_model_name_or_path=str(same)),
                              processing_class=tok,
                              train_dataset=Dataset.from_list([SENTIMENT]), peft_config=LoraConfig(r=2))
    assert trainer.reward_model is not None


@pytest.mark.parametrize("kind", ["word", "llama", "smollm2"])
def test_stop_token_outside_the_vocabulary_is_refused(tmp_path, kind):
    tok = tiny_tokenizer() if kind == "word" else tokenizer_kind(kind)
    with pytest.raises(ValueError, match=r"stop token '<\|nothing\|>' is not exactly one token of the vocabulary"):
        resolve_stop_token_id(tok, "<|nothing|>")
    with pytest.raises(ValueError, match="not exactly one token of the vocabulary"):
        GFlowNetTrainer(tiny_model("gpt2", len(tok)), _config(tmp_path, stop_token="<|nothing|>"),
                        processing_class=tok, train_dataset=Dataset.from_dict({"prompt": ["the cat"]}),
                        peft_config=LoraConfig(r=2))


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_vocabulary_masks_read_a_token_as_it_reads_mid_sequence(kind):
    """The arithmetic and continuation vocabulary masks read each token decoded alone: a SentencePiece tokenizer's
    lone "▁" (Llama writes " 12" as "▁", "1", "2") decodes to "" alone and was banned, so the arithmetic policy could
    not write its gold rationales (the replay seeds and SFT's targets were latents the sampler refuses), and
    continuation banned the space byte-level BPE allows.  The masks read `token_texts` (the text after another
    token); byte-level BPE reads the same either way."""
    from gfn_trl.sampling import LatentConstraints
    from gfn_trl.tasks import arithmetic as A
    from gfn_trl.tasks import continuation as C
    from gfn_trl.tokenization import token_texts

    tok = tokenizer_kind(kind)
    texts = token_texts(tok)
    assert [t for t in texts if t.strip() == "" and t] != []
    (space,) = encode_continuation(tok, " ") if len(encode_continuation(tok, " ")) == 1 else [None]
    if space is not None:
        assert texts[space] == " " and A.vocab_mask(tok)[space] and C.vocab_mask(tok)[space]
    mask = A.vocab_mask(tok)
    for tool in (A.calculator(tok), None):
        c = LatentConstraints(tok.eos_token_id, 60, 1, mask, tool)
        for p in A.make_splits(0, 30, 2, 3)["train"]:
            assert c.admits(A.gold_latent(tok, p, tool)), (kind, tool, tok.convert_ids_to_tokens(
                A.gold_latent(tok, p, tool)))
    if "llama" in kind or kind == "bos_chat":
        alone = tok.batch_decode([[i] for i in range(len(tok))], clean_up_tokenization_spaces=False)
        assert texts != alone  # what differs: the leading space SentencePiece drops from a text's first token
        assert all(t == a or t == " " + a for t, a in zip(texts, alone))
    else:
        assert texts == tok.batch_decode([[i] for i in range(len(tok))], clean_up_tokenization_spaces=False)
