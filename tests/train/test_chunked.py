"""``ftplan train`` with ``loss_impl="chunked"`` runs the chunked loss (``ftplan.stack.loss``) and trains as the
standard loss does: the same losses step by step, to float tolerance."""

from pathlib import Path

from tests.stack_fixtures import best_doc


def _train(doc, data, out, **kw):
    from ftplan.train.loop import TrainOptions, train

    return train(TrainOptions(config=doc, data=data, output=Path(out), **kw))


def test_chunked_training_matches_the_standard_loss(tiny_llama, data_file, tmp_path, monkeypatch):
    import ftplan.stack.loss as L

    calls = []
    real = L.chunked_cross_entropy

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(L, "chunked_cross_entropy", spy)
    kw = dict(max_steps=3, lr=2e-3, save_every=10)
    std = _train(best_doc(tiny_llama, gradient_checkpointing=False), data_file, tmp_path / "std", **kw)
    assert not calls
    ch = _train(best_doc(tiny_llama, gradient_checkpointing=False, loss_impl="chunked"), data_file,
                tmp_path / "chunked", **kw)
    assert len(calls) == 3 * 2  # every micro-batch (grad_accum 2) of every step
    assert all(abs(a - b) <= 2e-3 * abs(a) for a, b in zip(std.losses, ch.losses, strict=True)), (std.losses, ch.losses)
