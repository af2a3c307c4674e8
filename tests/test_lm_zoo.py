"""The language-model zoo: transformer, byte tokenizer, synthetic language, token classes, induction score."""

from __future__ import annotations

import copy
import string
import time

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from sbif_dsl.data.language import (
    generate_synthetic_language,
    generate_windows,
    make_language_dataset,
    text_files_dataset,
)
from sbif_dsl.models.transformer import Transformer, next_token_loss
from sbif_dsl.task import check_dataset, check_losses
from sbif_dsl.tokens import (
    STRUCTURAL_DEFAULT,
    ByteTokenizer,
    Induction,
    Positions,
    Predicate,
    Regex,
    TokenIds,
    class_masks,
    induction_score,
    repeated_block_tokens,
    score_from_attention,
)

LETTERS = [ord(c) for c in string.ascii_letters]
# pytest resets warning filters per test; fused attention under vmap warns about its (fast enough) fallback.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def tiny(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    args = dict(vocab_size=50, n_layers=2, n_heads=2, d_model=16, context=12) | kw
    return Transformer(**args)


# --- transformer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"positions": "learned"},
        {"mlp": True, "d_mlp": 32},
        {"layer_norm": False, "d_head": 5},
    ],
)
def test_shapes_and_explicit_attention_matches_fused(kw):
    m = tiny(**kw)
    x = torch.randint(0, 50, (3, 10))
    logits = m(x)
    assert logits.shape == (3, 10, 50)
    logits2, attn = m(x, return_attn=True)
    assert attn.shape == (2, 3, 2, 10, 10)
    torch.testing.assert_close(logits2, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 2, 10))
    assert attn.triu(diagonal=1).abs().max() == 0  # no query looks ahead
    assert next_token_loss(logits, x).shape == (3, 9)


def test_causal_future_tokens_do_not_change_earlier_logits():
    m = tiny(mlp=True)
    x = torch.randint(0, 50, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % 50
    for return_attn in (False, True):
        a = m(x, return_attn=return_attn)
        b = m(y, return_attn=return_attn)
        a, b = (a[0], b[0]) if return_attn else (a, b)
        torch.testing.assert_close(a[:, :7], b[:, :7])
        assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_shortformer_keeps_positions_out_of_the_values_and_residual():
    """With query/key weights zeroed, attention is uniform, so only values/residual could see positions."""
    x = torch.randint(0, 50, (2, 10))
    for positions, changes in (("shortformer", False), ("learned", True)):
        m = tiny(positions=positions)
        with torch.no_grad():
            for b in m.blocks:
                b.W_qk.weight.zero_()
        before = m(x)
        with torch.no_grad():
            m.pos_embed.add_(torch.randn_like(m.pos_embed))
        assert (not torch.allclose(before, m(x))) == changes


def test_context_overflow_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the model context"):
        tiny()(torch.zeros(1, 13, dtype=torch.int64))
    with pytest.raises(ValueError, match="positions"):
        tiny(positions="rotary")


def test_vmap_over_stacked_params_matches_a_loop():
    models = [tiny(seed=s, mlp=True) for s in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randint(0, 50, (4, 12))

    def per_token(p, b, tokens):
        return next_token_loss(functional_call(base, (p, b), (tokens,)), tokens)  # (B, T-1)

    stacked = vmap(per_token, in_dims=(0, 0, None))(params, buffers, x)  # (3, B, T-1)
    looped = torch.stack([next_token_loss(m(x), x) for m in models])
    assert stacked.shape == (3, 4, 11)
    torch.testing.assert_close(stacked, looped, atol=1e-5, rtol=1e-5)
    # and its gradient (what SGLD needs), chain by chain
    grads = vmap(torch.func.grad(lambda p, b, t: per_token(p, b, t).mean()), in_dims=(0, 0, None))(params, buffers, x)
    next_token_loss(models[1](x), x).mean().backward()
    torch.testing.assert_close(grads["unembed.weight"][1], models[1].unembed.weight.grad, atol=1e-5, rtol=1e-4)


# --- tokenizers ----------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer(special_tokens=["<|bos|>"])
    text = 'def f(x):\n    return "héllo ✓" + 42'
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.vocab_size == 257 and tok.special_ids == {"<|bos|>": 256}
    assert tok.decode([256, *tok.encode("hi")]) == "<|bos|>hi"
    assert tok.token_text(ord("(")) == "(" and tok.token_text(10) == "\n"
    assert tok.token_text(0xC3) == "\ufffd"  # a lone UTF-8 lead byte is no character
    with pytest.raises(ValueError, match="outside"):
        tok.token_text(300)


def test_hf_tokenizer_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from sbif_dsl.tokens import HFTokenizerFile

    model = tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = HFTokenizerFile(path)
    assert tok.encode("hello world") == [1, 2] and tok.vocab_size == 3
    assert tok.token_text(2) == "world"


# --- synthetic language and datasets --------------------------------------------------------------


def test_generator_is_seeded_and_windows_hold_a_repeated_span():
    a = generate_windows(50, context=64, seed=3)
    assert a == generate_windows(50, context=64, seed=3)
    assert [w.text for w in a] != generate_synthetic_language(50, context=64, seed=4)
    for w in a:
        assert len(w.text) == 64 and w.text.isascii()
        assert 8 <= w.span_len <= 20 and w.repeat_start >= w.span_start + w.span_len + 1
        first = w.text[w.span_start : w.span_start + w.span_len]
        assert first == w.text[w.repeat_start : w.repeat_start + w.span_len]
    none = generate_windows(5, context=64, seed=3, repeat_fraction=0.0)
    assert all(w.span_len == 0 for w in none)
    with pytest.raises(ValueError, match="do not fit"):
        generate_windows(1, context=30, span_len=(8, 20))


def test_generator_contains_every_structural_class():
    tok = ByteTokenizer()
    texts = generate_synthetic_language(200, context=64, seed=0)
    tokens = torch.tensor([tok.encode(t) for t in texts])  # (200, 64)
    names, masks = class_masks(tokens, {"induction": Induction(), **STRUCTURAL_DEFAULT}, tok)
    counts = dict(zip(names, masks.sum(dim=(1, 2)).tolist(), strict=True))
    for name in ["induction", *STRUCTURAL_DEFAULT]:
        assert counts[name] > 50, counts
    joined = "".join(texts)
    for piece in ("\n    ", "[", "{", "(", '"', "'", "=", "."):
        assert piece in joined
    assert counts["induction"] / tokens[:, 1:].numel() > 0.1  # induction pays off in most windows


def test_make_language_dataset_meets_the_contract():
    ds = check_dataset(make_language_dataset(n_train=40, n_query=8, context=64, seed=1), "synthetic")
    assert ds.train.inputs.shape == (40, 64) and ds.train.inputs.dtype == torch.int64
    assert torch.equal(ds.train.inputs, ds.train.targets)
    assert ds.meta["induction_token_pool"] == LETTERS
    assert ds.queries["query"].names[:2] == ["seq0000", "seq0001"] and len(ds.queries["query"]) == 8
    assert not any(torch.equal(q, t) for q in ds.queries["query"].inputs for t in ds.train.inputs)
    m = Transformer(256, context=64)
    losses = check_losses(ds.loss(m(ds.train.inputs[:4]), ds.train.targets[:4]), 4, "loss")
    assert losses.shape == (4, 63)


def test_text_files_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij" * 3)
    (tmp_path / "b.txt").write_text("0123456789" * 3)
    ds = check_dataset(text_files_dataset(str(tmp_path / "*.txt"), context=8, stride=4), "files")
    tok = ByteTokenizer()
    stream = tok.encode("abcdefghij" * 3 + "\n" + "0123456789" * 3)
    assert tok.decode(ds.train.inputs[1].tolist()) == tok.decode(stream[4:12])
    assert len(ds.train) == (len(stream) - 8) // 4 + 1
    split = text_files_dataset(tmp_path / "a.txt", context=8, stride=2, query_fraction=0.5)
    assert set(split.queries) == {"query"}
    train_tokens = {tuple(r) for r in split.train.inputs.tolist()}
    assert not train_tokens & {tuple(r) for r in split.queries["query"].inputs.tolist()}
    with pytest.raises(FileNotFoundError, match="no local text file"):
        text_files_dataset(str(tmp_path / "missing*.txt"), context=8)


# --- token classes ---------------------------------------------------------------------------------


def test_class_masks_on_a_hand_written_string():
    tok = ByteTokenizer()
    text = 'ab(cd) ab 12\n  x="ab"'
    tokens = torch.tensor([tok.encode(text)])  # (1, 21)
    rules = {
        "induction": Induction(),
        **STRUCTURAL_DEFAULT,
        "pos3": Positions((3,)),
        "x": TokenIds((ord("x"),)),
    }
    names, masks = class_masks(tokens, rules, tok)
    assert masks.shape == (len(rules) + 1, 1, 20) and names[-1] == "other"

    def predicted(name):  # loss position s is attributed to token s+1
        return [s + 1 for s in torch.nonzero(masks[names.index(name), 0]).flatten().tolist()]

    assert predicted("induction") == [8, 19]  # the second "ab" and the third: bigram "ab" seen at 0-1
    assert predicted("delimiters") == [2, 5, 17, 20]
    assert predicted("formatting") == [6, 9, 12, 13, 14]
    assert predicted("punctuation") == [16]
    assert predicted("digits") == [10, 11]
    assert predicted("word_start") == [3, 7, 15, 18]
    assert predicted("word_continuation") == [1, 4, 8, 19]
    assert predicted("pos3") == [3] and predicted("x") == [15]
    assert predicted("other") == []


def test_induction_mask_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5, (6, 30), generator=g)
    mask = Induction().token_mask(tokens)
    for i in range(6):
        t = tokens[i].tolist()
        seen, expected = set(), [False]
        for k in range(1, 30):
            expected.append((t[k - 1], t[k]) in seen)
            seen.add((t[k - 1], t[k]))
        assert mask[i].tolist() == expected


def test_remainder_predicates_and_errors():
    tokens = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])
    names, masks = class_masks(tokens, {"even": lambda t: t % 2 == 0, "big": Predicate(lambda t: t > 3)})
    assert names == ["even", "big", "other"]
    assert masks[2].tolist() == [[False, True, False], [True, False, True]]  # odd and <= 3
    assert masks[0].tolist() == [[True, False, True], [False, True, False]]
    _, none = class_masks(tokens, {"even": lambda t: t % 2 == 0}, remainder=None)
    assert none.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="remainder"):
        class_masks(tokens, {"other": TokenIds((1,))})
    with pytest.raises(ValueError, match="tokenizer"):
        class_masks(tokens, {"d": Regex("[0-9]")})
    with pytest.raises(ValueError, match="expected a mask"):
        class_masks(tokens, {"bad": lambda t: t[:, 1:] > 0})
    with pytest.raises(ValueError, match="invalid regex"):
        Regex("[")


# --- induction score ------------------------------------------------------------------------------


def test_score_from_perfect_and_uniform_attention():
    block, T = 8, 16
    perfect = torch.zeros(1, 1, 2, T, T)  # (layers, B, heads, T, T)
    perfect[..., 0, 0] = 1
    for i in range(1, T):
        target = i - block + 1 if i >= block else i  # second copy: the token after the earlier occurrence
        perfect[..., 0, i, target] = 1
    perfect[..., 1, :, :] = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).unsqueeze(1)  # uniform
    score = score_from_attention(perfect, block)
    assert score[0, 0] == 1.0
    assert score[0, 1] < 0.1


def test_repeated_block_tokens():
    x = repeated_block_tokens(20, 4, vocab_size=256, seed=0, token_pool=LETTERS)
    assert x.shape == (4, 20) and torch.equal(x[:, :10], x[:, 10:])
    assert all(len(set(r[:10])) == 10 and set(r) <= set(LETTERS) for r in x.tolist())


def test_untrained_model_has_no_induction():
    m = Transformer(256, n_layers=2, n_heads=4, d_model=64, context=64)
    out = induction_score(m, seq_len=64, n_seqs=16, vocab_size=256, seed=0, token_pool=LETTERS)
    assert out["per_head"].shape == (2, 4)
    assert out["score"] < 0.1
    assert abs(out["loss_first_copy"] - out["loss_second_copy"]) < 0.2
    assert m.training  # restored


# --- the key experiment: induction heads form on the synthetic language ----------------------------


def induction_formed(row: dict) -> bool:
    """Induction heads have formed: a high score and the repeated span predicted at least twice as well."""
    return row["score"] > 0.5 and row["span_second_loss"] < 0.5 * row["span_first_loss"]


def train_induction_model(
    steps: int = 3000, every: int = 250, seed: int = 0, context: int = 64, stop_when=None
) -> list[dict]:
    """Train a 2-layer attention-only transformer on the synthetic language and log the induction score
    (stopping at the first logged row where `stop_when(row)` holds, when given).

    Recommended study settings: byte tokens, context 64, d_model 64, 4 heads, shortformer
    positions, LayerNorm, AdamW lr 1e-3 (no weight decay), batch 32.
    """
    torch.manual_seed(seed)
    ds = make_language_dataset(n_train=20_000, n_query=256, context=context, seed=seed)
    x_train, x_query = ds.train.inputs, ds.queries["query"].inputs  # (n, T)
    first = torch.zeros(x_query.shape[0], context - 1, dtype=torch.bool)  # loss positions predicting copy 1
    second = torch.zeros_like(first)  # ... and copy 2 (first token of each copy excluded)
    for i, (a, b, n) in enumerate(ds.meta["spans"]["query"]):
        first[i, a : a + n - 1] = True
        second[i, b : b + n - 1] = True
    model = Transformer(256, n_layers=2, n_heads=4, d_model=64, context=context, mlp=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    log, t0 = [], time.perf_counter()
    for step in range(steps + 1):
        if step % every == 0:
            with torch.no_grad():
                model.eval()
                q = next_token_loss(model(x_query), x_query)  # (n_query, T-1)
                model.train()
            score = induction_score(model, context, 64, 256, seed=1, token_pool=ds.meta["induction_token_pool"])
            log.append(
                {
                    "step": step,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "query_loss": q.mean().item(),
                    "span_first_loss": q[first].mean().item(),
                    "span_second_loss": q[second].mean().item(),
                    "score": score["score"],
                }
            )
        if step == steps or (stop_when is not None and stop_when(log[-1])):
            break
        x = x_train[torch.randint(0, x_train.shape[0], (32,), generator=g)]  # (32, T)
        loss = next_token_loss(model(x), x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return log


@pytest.mark.slow
def test_induction_heads_form_on_the_synthetic_language():
    """Measured (seed 0): score 0.02-0.07 up to step 2000, 0.39 at 2250, 0.57 at 2500 (where it stops), 0.68 at
    3000. A model that never forms them trains all 3000 steps and fails the last assertion."""
    log = train_induction_model(stop_when=induction_formed)
    for row in log:
        print(row)
    assert log[0]["score"] < 0.2
    assert induction_formed(log[-1])
    jump = next(r["step"] for r in log if r["score"] > 0.3)
    assert 500 <= jump <= 3000  # a stage after a plateau, not from the start
