"""Safe under concurrency (issue 17): recording and pruning from several threads at once, nothing
left patched. Every interception (the attention tap, decoder-layer wrappers, forward hooks) is
installed once and acts only in the context (thread) that asked for it (`vtanalysis._core.scoped`,
`collect.tap`)."""
import threading

import pytest
import torch

from conftest import QUESTIONS
from vtanalysis import prune
from vtanalysis.collect import record_attention
from vtanalysis.collect.tap import _TAPS
from vtanalysis.models import tiny
from vtanalysis._core.scoped import _ACTIVE, scoped

ROUNDS = 20


def run_together(jobs: dict, rounds: int = ROUNDS) -> dict:
    """Run each job `rounds` times in its own thread, all starting together; their results by name."""
    barrier = threading.Barrier(len(jobs))
    results, errors = {name: [] for name in jobs}, []

    def worker(name, job):
        try:
            barrier.wait()
            for _ in range(rounds):
                results[name].append(job())
        except Exception as err:  # reported below, with the thread's name
            errors.append((name, err))

    threads = [threading.Thread(target=worker, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@torch.no_grad()
def plain_logits(vlm, batch):
    return vlm.model(**batch.model_inputs).logits[:, -1]


@pytest.fixture(scope="module")
def two_models():
    return tiny.build("llava", seed=1, num_layers=4), tiny.build("llava-next", seed=2, num_layers=4)


def test_recording_two_models_at_once_equals_recording_alone(two_models, images):
    """The issue's crash: two threads calling record_attention on two models (KeyError in record.py)."""
    a, b = two_models
    batch_a, batch_b = a.prepare(images[:2], QUESTIONS[:2]), b.prepare(images[1:2], QUESTIONS[1:2])
    want_a, want_b = record_attention(a, batch_a), record_attention(b, batch_b, layers=[0, 2])
    got = run_together({"a": lambda: record_attention(a, batch_a), "b": lambda: record_attention(b, batch_b, layers=[0, 2])})
    for rec in got["a"]:
        for s, w in zip(rec.samples, want_a.samples):
            assert torch.equal(s.text_to_image, w.text_to_image) and torch.equal(s.text_to_text, w.text_to_text)
    for rec in got["b"]:
        assert rec.layers == [0, 2] and torch.equal(rec[0].text_to_image, want_b[0].text_to_image)


def test_pruning_one_model_with_two_methods_and_a_plain_pass_at_once(two_models, images):
    """Two sessions pruning the same cached model (app) and a third running it plainly."""
    vlm = two_models[0]
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    jobs = {"fastv": lambda: prune.run(vlm, batch, "fastv", 0.25, max_new_tokens=2),
            "visionzip": lambda: prune.run(vlm, batch, "visionzip", 0.25, max_new_tokens=2),
            "adaptinfer": lambda: prune.run(vlm, batch, "adaptinfer", 0.25, max_new_tokens=2),
            "plain": lambda: plain_logits(vlm, batch),
            # fast tokenizers raise "Already borrowed" when shared across threads unguarded (VLM.tokenizer_lock)
            "prepare": lambda: vlm.prepare(images[:2], QUESTIONS[:2]).model_inputs["input_ids"],
            "prepare one": lambda: vlm.prepare(images[2:3], QUESTIONS[2:3]).model_inputs["input_ids"]}
    alone = {name: job() for name, job in jobs.items()}
    together = run_together(jobs)
    for name, runs in together.items():
        for got in runs:
            if name in ("plain", "prepare", "prepare one"):
                assert torch.equal(got, alone[name])
            else:
                assert torch.equal(got.logits, alone[name].logits) and torch.equal(got.token_ids, alone[name].token_ids)
                assert all(torch.equal(x, y) for s, t in zip(got.kept, alone[name].kept) for x, y in zip(s, t))


def test_outside_any_run_a_model_computes_the_stock_path_bit_for_bit(images):
    """Dispatchers stay installed after a run, and pass straight through: logits equal those of an
    identical model that vtanalysis never touched."""
    used, fresh = tiny.build("llava", seed=3, num_layers=4), tiny.build("llava", seed=3, num_layers=4)
    batch = used.prepare(images[:1], QUESTIONS[:1])
    want = plain_logits(fresh, batch)  # before any tap exists for this model
    prune.run(used, batch, "adaptprune", 0.25, max_new_tokens=2)
    record_attention(used, batch)
    assert torch.equal(plain_logits(used, batch), want)
    assert _ACTIVE.get() == {} and _TAPS.get() == {}


def test_an_exception_inside_a_callback_leaves_nothing_behind(two_models, images):
    vlm = two_models[0]
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    want = plain_logits(vlm, batch)
    base = prune.run(vlm, batch, "fastv", 0.25, max_new_tokens=2)

    class Boom(Exception):
        pass

    def boom(*_):
        raise Boom

    lm = vlm.adapter.language_model(vlm.model)
    for attach in (lambda: scoped(vlm.decoder_layers[2], "post", boom), lambda: scoped(lm, "pre", boom)):
        with pytest.raises(Boom), attach():
            prune.run(vlm, batch, "fastv", 0.25, max_new_tokens=2)
        assert _ACTIVE.get() == {} and _TAPS.get() == {}
        assert torch.equal(plain_logits(vlm, batch), want)
        assert torch.equal(prune.run(vlm, batch, "fastv", 0.25, max_new_tokens=2).logits, base.logits)


def test_callbacks_of_one_thread_are_invisible_to_another(two_models, images):
    vlm = two_models[0]
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    calls = {"mine": 0}
    inside, done = threading.Event(), threading.Event()

    def count(*_):
        calls["mine"] += 1

    def holder():
        with scoped(vlm.decoder_layers[0], "post", count):
            inside.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(30)
    plain_logits(vlm, batch)  # this thread: the other's callback must not run
    done.set()
    t.join()
    assert calls["mine"] == 0


def test_host_round_trip_counting_refuses_a_second_thread():
    """HostRoundTrips patches torch.Tensor methods process-wide: it cannot be made per-thread, so a
    second thread entering one gets a clear error instead of miscounting."""
    from vtanalysis import VTAError
    from vtanalysis.perf import HostRoundTrips

    entered, release, seen = threading.Event(), threading.Event(), []

    def holder():
        with HostRoundTrips():
            entered.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    entered.wait(30)
    try:
        with pytest.raises(VTAError, match="already counting in another thread"):
            with HostRoundTrips():
                seen.append("entered")
    finally:
        release.set()
        t.join()
    assert seen == []
    with HostRoundTrips():  # free again once the other thread is done: entering raises nothing
        pass
