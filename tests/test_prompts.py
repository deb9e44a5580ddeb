"""Chat formatting, left padding and the instruction-end / probe positions."""

from __future__ import annotations

import pytest
import torch

from conftest import TEMPLATE_SPECIALS, TEMPLATES, make_tokenizer
from scans import prompts
from scans.errors import ScansError

PROMPTS = ["Hi", "How do I bake bread at home, step by step?", "What is the capital of France?"]


@pytest.fixture(params=sorted(TEMPLATES))
def tok(request):
    return make_tokenizer(request.param)


def test_template_specials_are_single_ids(tok):
    style = next(s for s, t in TEMPLATES.items() if t == tok.chat_template)
    for special in TEMPLATE_SPECIALS[style]:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special


def test_format_chat_ends_with_generation_prompt(tok):
    text = prompts.format_chat(tok, "Hello there")
    assert "Hello there" in text
    ends = ("<|im_start|>assistant\n", "[/INST]", "<|end_header_id|>\n\n", "<start_of_turn>model\n")
    assert text.endswith(ends), text


def test_build_batch_positions(tok):
    batch = prompts.build_batch(tok, PROMPTS, probe="Sure")
    probe_ids = prompts.encode_probe(tok, "Sure")
    pad = prompts.pad_id_of(tok)
    n, width = batch.input_ids.shape
    assert n == len(PROMPTS)
    assert batch.attention_mask.shape == (n, width)
    lengths = []
    for row, text in enumerate(PROMPTS):
        ids = batch.input_ids[row].tolist()
        mask = batch.attention_mask[row].tolist()
        chat = prompts.encode_chat(tok, text)
        offset = width - len(chat) - len(probe_ids)
        lengths.append(len(chat))
        # left padding: pads (mask 0) first, then the real tokens (mask 1)
        assert mask == [0] * offset + [1] * (width - offset)
        assert ids[:offset] == [pad] * offset
        inst = int(batch.positions["inst"][row])
        probe = int(batch.positions["probe"][row])
        assert inst == offset + len(chat) - 1
        assert ids[offset : inst + 1] == chat
        assert ids[inst + 1 : probe + 1] == probe_ids
        assert probe == width - 1
        # the formatted text survives the round trip through the ids
        assert tok.decode(ids[offset : inst + 1]) == prompts.format_chat(tok, text)
    assert len(set(lengths)) > 1, "test prompts should have different lengths"
    assert int(batch.attention_mask.sum(-1).max()) == width  # the longest row has no padding


def test_build_batch_without_probe(tok):
    batch = prompts.build_batch(tok, PROMPTS)
    assert set(batch.positions) == {"inst", "uend"}
    assert (batch.positions["inst"] == batch.input_ids.shape[1] - 1).all()
    for row, text in enumerate(PROMPTS):
        chat = prompts.encode_chat(tok, text)
        assert batch.input_ids[row, -len(chat) :].tolist() == chat


def test_inst_position_same_with_and_without_probe(tok):
    with_probe = prompts.build_batch(tok, PROMPTS, probe="Sure")
    without = prompts.build_batch(tok, PROMPTS)
    # counted from each row's first real token the instruction end is the same
    first_real = lambda b: (b.attention_mask == 0).sum(-1)  # noqa: E731
    assert torch.equal(
        with_probe.positions["inst"] - first_real(with_probe), without.positions["inst"] - first_real(without)
    )


@pytest.mark.parametrize("bad", ["", "   \n\t"])
def test_empty_prompt(tok, bad):
    with pytest.raises(ScansError, match="fix:"):
        prompts.build_batch(tok, ["fine", bad])


def test_no_prompts(tok):
    with pytest.raises(ScansError, match="fix:"):
        prompts.build_batch(tok, [])


def test_too_long(tok):
    text = "word " * 200
    n = len(prompts.encode_chat(tok, text)) + len(prompts.encode_probe(tok, "Sure"))
    with pytest.raises(ScansError) as info:
        prompts.build_batch(tok, ["short", text], probe="Sure", max_length=n - 1)
    message = str(info.value)
    assert str(n) in message and str(n - 1) in message and "fix:" in message
    assert "\n" not in message
    # exactly at the limit is fine
    assert prompts.build_batch(tok, ["short", text], probe="Sure", max_length=n).input_ids.shape[1] == n


def test_gemma_system_merged_into_user_turn():
    tok = make_tokenizer("gemma")
    with pytest.raises(Exception):  # noqa: B017 - the template itself rejects a system role
        tok.apply_chat_template(
            [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False
        )
    text = prompts.format_chat(tok, "Hello there", system="Be brief.")
    assert text.count("<start_of_turn>user\n") == 1
    assert "Be brief.\n\nHello there<end_of_turn>" in text
    batch = prompts.build_batch(tok, ["Hello there"], system="Be brief.", probe="Sure")
    assert batch.input_ids.shape[0] == 1


def test_system_prompt_used(tok):
    if tok.chat_template == TEMPLATES["mistral"]:
        pytest.skip("the tiny Mistral template drops system messages")
    assert "Be brief." in prompts.format_chat(tok, "Hi", system="Be brief.")


def test_encode_chat_adds_bos_once():
    tok = make_tokenizer("chatml")
    plain = prompts.encode_chat(tok, "Hi")
    tok.add_bos_token = True
    with_bos = prompts.encode_chat(tok, "Hi")
    assert with_bos == [tok.bos_token_id, *plain]
    tok2 = make_tokenizer("llama2")  # template already writes <s>
    tok2.add_bos_token = True
    ids = prompts.encode_chat(tok2, "Hi")
    assert ids[0] == tok2.bos_token_id and ids[1] != tok2.bos_token_id


def test_encode_probe_empty():
    tok = make_tokenizer("chatml")
    with pytest.raises(ScansError, match="fix:"):
        prompts.encode_probe(tok, "")


def test_left_pad_named_positions():
    batch = prompts.left_pad([[5, 6, 7], [8]], pad_id=0, named={"last": [2, 0], "first": [0, 0]})
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.positions["last"].tolist() == [2, 2]
    assert batch.positions["first"].tolist() == [0, 2]


def test_pad_id_falls_back_to_eos():
    class Tok:
        pad_token_id = None
        eos_token_id = [7, 8]

    assert prompts.pad_id_of(Tok()) == 7
    Tok.eos_token_id = None
    assert prompts.pad_id_of(Tok()) == 0


def test_uend_is_the_last_token_of_the_users_text(tok):
    """Decoding up to the uend position ends with the user's text; one token more does not."""
    batch = prompts.build_batch(tok, PROMPTS)
    for row, text in enumerate(PROMPTS):
        ids = batch.input_ids[row].tolist()
        offset = int((batch.attention_mask[row] == 0).sum())
        end = int(batch.positions["uend"][row])
        assert offset <= end < int(batch.positions["inst"][row])
        assert tok.decode(ids[offset : end + 1]).endswith(text.strip())
        assert not tok.decode(ids[offset : end + 2]).endswith(text.strip())


def test_select_equals_building_the_sub_batch(tok):
    """Rows picked from a padded batch equal a batch built from those prompts alone."""
    full = prompts.build_batch(tok, PROMPTS, probe="Sure")
    rows = [0, 2] if len(PROMPTS) > 2 else [0]
    direct = prompts.build_batch(tok, [PROMPTS[i] for i in rows], probe="Sure")
    sub = full.select(rows)
    assert torch.equal(sub.input_ids, direct.input_ids)
    assert torch.equal(sub.attention_mask, direct.attention_mask)
    assert sub.positions.keys() == direct.positions.keys()
    for name in direct.positions:
        assert torch.equal(sub.positions[name], direct.positions[name]), name


def test_too_long_prompt_error_names_the_prompt(tok) -> None:
    long = "Explain this log line by line: " + "error " * 200
    with pytest.raises(
        ScansError, match=r"prompt 1 \('Explain this log line by line: error \.\.\.'\) is \d+ tokens"
    ):
        prompts.build_batch(tok, ["short one", long], max_length=64)
