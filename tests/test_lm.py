"""Chapter 09's language-model helpers (deeplsp_helpers.lm) on tiny models: perplexity, generation with and without
the KV cache, depth and width pruning of a decoder, training and distillation, and the errors for bad input."""

import copy
import math

import pytest
import torch
from torch import nn

from deeplsp_helpers import lm, models, text_data, zoo
from deeplsp_helpers import transformer_pruning as tpr

TOY = text_data.encode("In the beginning God created the heaven and the earth. " * 40)  # 2,200 bytes, periodic (55)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and do not slow to a crawl when other work holds the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_gpt(seed: int = 0, depth: int = 2, context: int = 32, scale: float | None = 0.3) -> models.TinyGPT:
    """A tiny TinyGPT; with ``scale`` its weights are redrawn larger than the init's (std 0.02), so that every
    block, head, neuron and position changes the logits well above float rounding."""
    torch.manual_seed(seed)
    model = models.TinyGPT(context=context, dim=16, depth=depth, num_heads=2, mlp_hidden=32).eval()
    if scale is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, scale)
    return model


class UniformLM(nn.Module):
    """A "language model" with the interface lm expects whose logits are all zero: every next byte is 1/vocab."""

    def __init__(self, vocab: int = 256, context: int = 8):
        super().__init__()
        self.blocks, self.context, self.vocab = nn.ModuleList(), context, vocab

    def new_cache(self):
        return []

    def forward(self, idx, caches=None):
        return torch.zeros(*idx.shape, self.vocab)


class NextByteLM(UniformLM):
    """Puts almost all probability on byte ``idx + 1``: on text that counts up, it is sure and right."""

    def forward(self, idx, caches=None):
        return 30.0 * nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float()


# --- perplexity ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [256, 10])
def test_a_uniform_model_has_perplexity_equal_to_the_vocabulary_size(vocab):
    tokens = torch.arange(100) % vocab
    assert lm.perplexity(UniformLM(vocab), tokens) == pytest.approx(vocab, rel=1e-5)
    assert lm.perplexity(UniformLM(vocab), tokens, max_windows=2, batch_size=1) == pytest.approx(vocab, rel=1e-5)


def test_perplexity_scores_each_byte_against_the_next_one():
    tokens = (torch.arange(300) % 256).to(torch.uint8)  # 0, 1, 2, ...: the next byte is always this one + 1
    assert lm.perplexity(NextByteLM(), tokens) == pytest.approx(1.0, abs=1e-6)  # aligned targets: sure and right
    shifted = torch.cat([tokens[:1], tokens])  # a repeated byte breaks the count once per window at most
    assert lm.perplexity(NextByteLM(), shifted) > 1.0


def test_nll_from_logits_is_the_mean_negative_log_softmax_of_the_targets():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]])  # [1, 2, 3]
    targets = torch.tensor([[0, 1]])

    def log_softmax(row, k):
        return row[k] - math.log(sum(math.exp(v) for v in row))

    expected = -(log_softmax([2.0, 0.0, -1.0], 0) + log_softmax([0.5, 0.5, 3.0], 1)) / 2
    assert lm.nll_from_logits(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert lm.nll_from_logits(logits, targets.to(torch.uint8)).item() == pytest.approx(expected, rel=1e-6)


def test_nll_from_logits_refuses_targets_that_do_not_fit():
    logits = torch.zeros(2, 3, 5)
    with pytest.raises(TypeError, match=r"logits must be a tensor \[batch, tokens, vocab\]"):
        lm.nll_from_logits(torch.zeros(6, 5), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must be \[batch, tokens\] = \(2, 3\)"):
        lm.nll_from_logits(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):  # used to be truncated by .long(): a silent wrong answer
        lm.nll_from_logits(logits, torch.full((2, 3), 1.7))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):  # used to be an IndexError from inside cross_entropy
        lm.nll_from_logits(logits, torch.full((2, 3), 5))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        lm.nll_from_logits(logits, torch.full((2, 3), -1))


def test_perplexity_refuses_bad_text_and_non_language_models():
    model = _tiny_gpt()
    with pytest.raises(ValueError, match="context 32 needs 33"):
        lm.perplexity(model, TOY[:20])
    with pytest.raises(TypeError, match="integer"):  # float bytes used to be truncated silently
        lm.perplexity(model, TOY.float() + 0.5)
    with pytest.raises(TypeError, match="1-D tensor"):
        lm.perplexity(model, TOY[None])
    with pytest.raises(ValueError, match="token ids must lie in"):
        lm.perplexity(model, TOY.long() + 200)
    with pytest.raises(TypeError, match="language model like models.TinyGPT"):
        lm.perplexity(models.LeNet(), TOY)
    with pytest.raises(ValueError, match="batch_size"):
        lm.perplexity(model, TOY, batch_size=0)


# --- the model and its KV cache --------------------------------------------------------------------------------------

def test_a_decoder_is_causal_and_maps_bytes_to_next_byte_logits():
    model = _tiny_gpt()
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        out = model(x)
        changed = x.clone()
        changed[:, 12:] = (changed[:, 12:] + 1) % 256
        out2 = model(changed)
    assert out.shape == (2, 20, 256)
    torch.testing.assert_close(out[:, :12], out2[:, :12])  # a later byte never changes an earlier prediction
    assert not torch.allclose(out[:, 12:], out2[:, 12:])
    for dtype in (torch.int32, torch.uint8):
        torch.testing.assert_close(model(x.to(dtype)), out)


@pytest.mark.parametrize("chunks", [[20], [1] * 20, [7, 1, 1, 11], [5, 15]])
def test_logits_through_the_cache_in_chunks_equal_one_full_forward(chunks):
    model = _tiny_gpt()
    x = torch.randint(0, 256, (3, sum(chunks)))
    caches = model.new_cache()
    with torch.no_grad():
        full = model(x)
        parts, start = [], 0
        for c in chunks:
            parts.append(model(x[:, start:start + c], caches))
            start += c
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert all(c["k"].shape == (3, 2, 20, 8) for c in caches)  # [N, heads, tokens so far, head_dim]


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_k=5)])
def test_generation_with_the_kv_cache_equals_recomputing_the_whole_sequence(kwargs):
    model = _tiny_gpt()
    prompt = text_data.encode("And God said")
    for seed in (0, 1):
        cached = lm.generate(model, prompt, 20, seed=seed, use_cache=True, **kwargs)
        full = lm.generate(model, prompt, 20, seed=seed, use_cache=False, **kwargs)
        assert torch.equal(cached, full)
        assert cached.dtype == torch.int64 and len(cached) == len(prompt) + 20
        assert torch.equal(cached[:len(prompt)], prompt.long())
    if kwargs["temperature"]:
        assert not torch.equal(lm.generate(model, prompt, 20, seed=0, **kwargs),
                               lm.generate(model, prompt, 20, seed=1, **kwargs))  # the seed is used


def test_generation_fills_the_context_exactly_and_zero_new_tokens_give_the_prompt():
    model = _tiny_gpt()
    prompt = text_data.encode("In the beginning")  # 16 bytes of a context of 32
    assert len(lm.generate(model, prompt, 16)) == 32
    assert torch.equal(lm.generate(model, prompt, 0), prompt.long())
    greedy = lm.generate(model, prompt, 5, temperature=0)
    with torch.no_grad():  # greedy: each new byte is the argmax after the sequence so far
        for i in range(len(prompt), len(greedy)):
            assert greedy[i] == model(greedy[None, :i])[0, -1].argmax()
    text = lm.sample_text(model, "And", 6, temperature=0)
    assert text.startswith("And") and text == text_data.decode(lm.generate(model, text_data.encode("And"), 6,
                                                                           temperature=0))


def test_generation_refuses_bad_arguments():
    model = _tiny_gpt()
    prompt = text_data.encode("abc")
    with pytest.raises(ValueError, match=r"longer than the model's context \(32\)"):
        lm.generate(model, prompt, 30)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(model, prompt, 3, temperature=-0.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate(model, prompt, -1)
    with pytest.raises(TypeError, match="max_new_tokens"):
        lm.generate(model, prompt, 2.0)
    with pytest.raises(ValueError, match="top_k"):
        lm.generate(model, prompt, 3, top_k=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        lm.generate(model, torch.zeros(0, dtype=torch.long), 3)
    with pytest.raises(TypeError, match="1-D integer tensor"):
        lm.generate(model, prompt[None], 3)
    with pytest.raises(TypeError, match="1-D integer tensor"):
        lm.generate(model, prompt.float(), 3)
    with pytest.raises(TypeError, match="1-D integer tensor"):  # bools used to pass as the bytes 0 and 1
        lm.generate(model, torch.tensor([True, False]), 3)
    with pytest.raises(ValueError, match="token ids must lie in"):
        lm.generate(model, torch.tensor([65, 300]), 3)
    with pytest.raises(TypeError, match="use_cache"):
        lm.generate(model, prompt, 3, use_cache="yes")
    with pytest.raises(ValueError, match="empty"):
        lm.sample_text(model, "", 3)


def test_the_model_refuses_bad_input_with_a_message_not_a_library_traceback():
    model = _tiny_gpt()
    with pytest.raises(ValueError, match=r"33 tokens is longer than the model's context \(32\)"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\), got 0\.\.256"):
        model(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\), got -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 4))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match="no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokens"):  # used to be a RuntimeError from min() of an empty tensor
        model(torch.zeros(0, 4, dtype=torch.long))
    caches = model.new_cache()
    model(torch.zeros(1, 30, dtype=torch.long), caches)
    with pytest.raises(ValueError, match=r"33 tokens is longer than the model's context \(32\)"):
        model(torch.zeros(1, 3, dtype=torch.long), caches)  # the cached tokens count
    with pytest.raises(ValueError, match="batch"):  # used to be a size mismatch from inside torch.cat
        model(torch.zeros(2, 1, dtype=torch.long), caches)
    with pytest.raises(ValueError, match="new_cache"):
        model(torch.zeros(1, 1, dtype=torch.long), caches[:1])
    with pytest.raises(ValueError, match="new_cache"):
        model(torch.zeros(1, 1, dtype=torch.long), [None, None])
    with pytest.raises(ValueError, match="not divisible"):
        models.TinyGPT(dim=10, num_heads=4)
    with pytest.raises(ValueError, match="context"):
        models.TinyGPT(context=0)


def test_unknown_model_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="known models: lenet, vgg, resnet, mobilenet, vit, gpt"):
        models.build_model("gpt2")
    with pytest.raises(ValueError, match="known models: .*gpt"):
        zoo.load_pretrained("gpt2")
    assert isinstance(models.build_model("GPT"), models.TinyGPT)


# --- training and distillation ---------------------------------------------------------------------------------------

def test_a_few_training_steps_lower_the_loss_and_the_best_step_is_kept():
    model = _tiny_gpt(scale=None)
    ppl0 = lm.perplexity(model, TOY, max_windows=8)
    assert ppl0 == pytest.approx(256, rel=0.05)  # the init (std 0.02) guesses nearly uniformly
    history = lm.train_lm(model, TOY, TOY, steps=20, lr=1e-2, batch_size=8, warmup=3, eval_every=10,
                          eval_windows=8)
    assert history["steps"] == [10, 20] and len(history["val_ppl"]) == len(history["train_loss"]) == 2
    assert history["val_ppl"][-1] < ppl0 / 4 and history["train_loss"][-1] < history["train_loss"][0]
    best = min(history["val_ppl"])
    assert history["best_step"] == history["steps"][history["val_ppl"].index(best)]
    assert lm.perplexity(model, TOY, max_windows=8) == pytest.approx(best, rel=1e-5)  # the model holds the best step
    assert history["seconds"] > 0 and not model.training  # the model's mode is given back (eval)


def test_training_without_validation_keeps_the_last_step():
    model = _tiny_gpt(scale=None)
    history = lm.train_lm(model, TOY, steps=3, batch_size=4, warmup=1)
    assert history["steps"] == [] and history["best_step"] == 3


def _manual_kl(student, teacher, x):
    with torch.no_grad():
        p = teacher(x).log_softmax(-1)
        q = student(x).log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())  # KL(teacher || student) per position, averaged


def test_distillation_loss_is_the_kl_to_the_teacher():
    teacher = _tiny_gpt(seed=0)
    twin = copy.deepcopy(teacher)
    history = lm.train_lm(twin, TOY, TOY, steps=1, lr=1e-6, batch_size=4, warmup=0, eval_every=1, eval_windows=2,
                          teacher=teacher)
    assert history["train_loss"][0] == pytest.approx(0.0, abs=1e-5)  # a student identical to its teacher: no loss
    student = _tiny_gpt(seed=1)
    g = torch.Generator().manual_seed(0)  # train_lm's first batch (seed 0)
    x, _ = text_data.random_windows(TOY, 4, 32, g)
    expected = _manual_kl(student, teacher, x)
    history = lm.train_lm(student, TOY, TOY, steps=1, lr=1e-6, batch_size=4, warmup=0, eval_every=1,
                          eval_windows=2, teacher=teacher)
    assert expected > 0.1 and history["train_loss"][0] == pytest.approx(expected, rel=1e-4)
    before = _manual_kl(student, teacher, x)
    lm.train_lm(student, TOY, steps=40, lr=1e-2, batch_size=8, warmup=2, teacher=teacher)
    assert _manual_kl(student, teacher, x) < before / 2  # distillation brings the student to the teacher


def test_train_lm_refuses_bad_arguments():
    model = _tiny_gpt(scale=None)
    with pytest.raises(ValueError, match="steps"):
        lm.train_lm(model, TOY, steps=0)
    with pytest.raises(ValueError, match="lr"):
        lm.train_lm(model, TOY, steps=1, lr=0)
    with pytest.raises(ValueError, match="batch_size"):
        lm.train_lm(model, TOY, steps=1, batch_size=0)
    with pytest.raises(ValueError, match="context 32 needs 33"):
        lm.train_lm(model, TOY[:10], steps=1)
    with pytest.raises(TypeError, match="language model"):
        lm.train_lm(model, TOY, steps=1, teacher=models.LeNet())
    other = models.TinyGPT(vocab_size=128, context=32, dim=16, depth=1, num_heads=2, mlp_hidden=8)
    with pytest.raises(ValueError, match="vocab"):  # used to be a shape error from inside kl_div
        lm.train_lm(model, TOY.clamp(max=127), steps=1, teacher=other)


def test_chapter_08s_calibration_statistics_run_on_a_decoder_with_calibration_text():
    model = _tiny_gpt()
    batches = lm.calibration_text(TOY, n_windows=4, context=32, batch_size=2)
    norms = tpr.activation_norms(model, None, batches)  # Wanda's input norms, for every attention and MLP linear
    assert set(norms) == {f"blocks.{b}.{s}" for b in range(2) for s in ("attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                                        "attn.out_proj", "mlp.fc1", "mlp.fc2")}
    assert norms["blocks.0.mlp.fc2"].shape == (32,) and (norms["blocks.1.attn.q_proj"] > 0).all()
    hessians = tpr.input_hessian(model, {"fc1": model.blocks[1].mlp.fc1}, batches)  # SparseGPT's
    torch.testing.assert_close(hessians["fc1"].diagonal().sqrt(), norms["blocks.1.mlp.fc1"])
