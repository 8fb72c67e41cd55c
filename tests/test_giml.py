"""gi_tutorial.giml (and the stream of gi_tutorial.fl.fl_rounds): the threat model of the stream, one inner round,
the Reptile step, meta-training, snapshots."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch

from gi_tutorial import analytic, claims, data, fl, generators, giml, invert, models, spaces, stats

TINY = giml.InnerSettings(latent_iters=30, latent_lr=0.05, weight_iters=40, weight_lr=1e-3)


@pytest.fixture(scope="module")
def private(empty_root):
    """The clients' private images: the 20 Fashion-MNIST test images that ship with the foolbox wheel."""
    return data.load_dataset("fashion_mnist", "test", 20, root=empty_root, allow_download=False)


@pytest.fixture(scope="module")
def victim():
    return models.build_model("convnet_fc", in_channels=1, seed=1)


def _perturbed(generator, scale, seed):
    g = torch.Generator().manual_seed(seed)
    moved = copy.deepcopy(generator)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return moved


def test_reptile_step_moves_every_parameter_by_step_size_times_the_mean_difference():
    w = generators.untrained_generator(seed=3)
    adapted = [_perturbed(w, 0.1, seed) for seed in (1, 2, 3)]
    stepped = copy.deepcopy(w)
    giml.reptile_step(stepped, adapted, step_size=0.25)
    for (name, before), after, *primes in zip(
        w.named_parameters(), stepped.parameters(), *(a.parameters() for a in adapted)
    ):
        expected = before + 0.25 * (torch.stack(primes).mean(0) - before)
        assert torch.allclose(after, expected, atol=1e-7), name
        assert not torch.equal(after, before), name
    for (name, b0), b1 in zip(w.named_buffers(), stepped.buffers()):
        assert torch.equal(b0, b1), f"buffer {name} moved"


def test_the_authors_adam_variant_steps_against_the_pseudo_gradient():
    w = generators.untrained_generator(seed=3)
    target = _perturbed(w, 0.1, 7)
    stepped = copy.deepcopy(w)
    optimizer = torch.optim.Adam(stepped.parameters(), lr=0.5)
    giml.reptile_step(stepped, [target], step_size=1e-3, optimizer=optimizer)
    for before, after, prime in zip(w.parameters(), stepped.parameters(), target.parameters()):
        # Adam's first step is lr * g / (|g| + eps): lr towards w' in every coordinate that differs
        differs = (prime - before).abs() > 1e-4
        assert torch.allclose((after - before)[differs], 1e-3 * torch.sign(prime - before)[differs], rtol=1e-2)


def test_one_meta_step_moves_w_by_step_size_times_the_adapted_difference(private, victim):
    """Catches the bug of the authors' StyleGAN path, where w' is the unadapted generator (a zero step)."""
    images, labels = private
    rounds = list(fl.fl_rounds(images, labels, victim, 1, seed=4))
    w = generators.untrained_generator(seed=0)
    w_prime, run = giml.inner_round(rounds[0].updates[0], rounds[0].model, w, TINY, seed=9)
    moved = [(a - b).abs().max().item() for a, b in zip(w_prime.parameters(), w.parameters())]
    assert max(moved) > 1e-3, "the inner round did not adapt the generator"
    assert run.weights.grad_loss < run.latent.grad_loss  # adapting the weights matched the gradient better
    result = giml.meta_train(rounds, w, 1, step_size=0.4, inner=TINY, seed=9, progress=False)
    for before, prime, after in zip(w.parameters(), w_prime.parameters(), result.generator.parameters()):
        assert torch.allclose(after - before, 0.4 * (prime - before), atol=1e-6)


def test_a_few_meta_steps_lower_the_next_rounds_latent_distance(private, victim):
    """Six meta-steps from an untrained generator, then GI-z on the next round's update: the latent
    search ends closer (measured: 0.40 of the untrained generator's distance; with the rounds,
    the generator and the meta-seed all at 1 or all at 2, 0.62 and 0.63; at 8 steps, 0.52)."""
    images, labels = private
    rounds = list(fl.fl_rounds(images, labels, victim, 7, seed=0))
    untrained = generators.untrained_generator(seed=0)
    result = giml.meta_train(rounds[:6], untrained, 6, inner=TINY, progress=False)
    held_out = rounds[6]
    distances = []
    for g in (untrained, result.generator):
        run = invert.reconstruct(
            held_out.updates[0],
            held_out.model,
            spaces.LatentSpace(g, 1),
            optimizer=invert.Adam(0.05, decay=True),
            num_iters=30,
            distance="cosine",
            progress=False,
        )
        distances.append(run.grad_loss)
    assert distances[1] < 0.7 * distances[0], distances


def _meta_trained(rounds):
    tiny = giml.InnerSettings(latent_iters=5, weight_iters=5)
    return giml.meta_train(rounds, generators.untrained_generator(0), 2, inner=tiny, seed=0, progress=False).generator


def _reachable_tensors(obj, seen=None):
    """Every tensor reachable from ``obj`` through containers, dataclass fields, modules and attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
        for value in vars(obj).values():
            if not isinstance(value, dict) or not value or not isinstance(next(iter(value.values())), torch.nn.Module):
                yield from _reachable_tensors(value, seen)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _reachable_tensors(value, seen)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _reachable_tensors(value, seen)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _reachable_tensors(getattr(obj, name), seen)


def test_meta_training_sees_no_image(private, victim):
    """The meta-learner takes rounds, not images. Replacing the clients' images after they computed their
    updates changes nothing; replacing them before does (so the comparison can tell); and no tensor that
    meta_train receives holds an image."""
    assert "images" not in inspect.signature(giml.meta_train).parameters
    images, labels = private
    secret, other = images[:10].clone(), images[10:].clone()  # two sets of private images, same size
    rounds = list(fl.fl_rounds(secret, labels[:10], victim, 2, seed=0))  # the updates are computed here
    clean = _meta_trained(rounds)
    secret.copy_(other)  # the clients' images change after they shared their updates
    after = _meta_trained(rounds)
    assert all(torch.equal(a, b) for a, b in zip(clean.parameters(), after.parameters()))
    secret.copy_(images[:10])
    lazy = fl.fl_rounds(secret, labels[:10], victim, 2, seed=0)  # a generator: nothing is computed yet
    secret.copy_(other)  # ... so these images are the ones the clients compute their updates on
    before = _meta_trained(lazy)
    assert any(not torch.equal(a, b) for a, b in zip(clean.parameters(), before.parameters()))
    flat = torch.cat([images, other]).flatten(1)
    tensors = list(_reachable_tensors(rounds))
    assert len(tensors) > 10  # the walk reaches the models and the updates
    for tensor in tensors:
        assert tensor.untyped_storage().data_ptr() != secret.untyped_storage().data_ptr(), "a view of the images"
        values = tensor.detach().flatten()
        if values.numel() == flat.shape[1]:
            assert not (flat == values).all(dim=1).any(), "a tensor the meta-learner receives equals a private image"


def test_the_victim_trains_every_few_rounds_unless_frozen(private, victim):
    images, labels = private
    rounds = list(fl.fl_rounds(images, labels, victim, 3, fedsgd_every=2, seed=0))
    same = [torch.equal(a, b) for a, b in zip(rounds[0].model.parameters(), rounds[1].model.parameters())]
    changed = [torch.equal(a, b) for a, b in zip(rounds[1].model.parameters(), rounds[2].model.parameters())]
    assert all(same) and not any(changed)
    assert all(torch.equal(a, b) for a, b in zip(victim.parameters(), rounds[0].model.parameters()))
    assert all(u.labels is not None and u.batch_size == 1 for r in rounds for u in r.updates)
    frozen = list(fl.fl_rounds(images, labels, victim, 3, fedsgd_every=None, seed=0))
    assert all(torch.equal(a, b) for r in frozen for a, b in zip(victim.parameters(), r.model.parameters()))
    for a, b in zip(rounds, frozen):  # the same clients draw the same batches either way
        assert all(torch.equal(u.labels, v.labels) for u, v in zip(a.updates, b.updates))


def test_a_stream_without_labels_is_inverted_with_the_labels_read_off_each_update(private, victim):
    images, labels = private
    shared = list(fl.fl_rounds(images, labels, victim, 6, clients_per_round=2, batch_size=4, seed=3))
    hidden = list(
        fl.fl_rounds(images, labels, victim, 6, clients_per_round=2, batch_size=4, share_labels=False, seed=3)
    )
    unique = repeated = 0
    for r_shared, r_hidden in zip(shared, hidden):
        for u, v in zip(r_shared.updates, r_hidden.updates):
            assert v.labels is None and v.batch_size == 4
            assert all(torch.equal(a, b) for a, b in zip(u.gradients, v.gradients))
            recovered = giml.task_labels(v, r_hidden.model)
            truth = u.labels.sort().values
            if len(set(u.labels.tolist())) == 4:  # all different: read off exactly
                assert torch.equal(recovered, truth)
                unique += 1
            else:  # a repeated label cannot be read off: some recovered label is wrong
                assert not torch.equal(recovered, truth)
                repeated += 1
            assert giml.task_labels(u, r_shared.model) is None  # shared labels are used as they are
    assert unique and repeated, (unique, repeated)  # the seed gives both kinds of batch
    w_prime, run = giml.inner_round(hidden[0].updates[0], hidden[0].model, generators.untrained_generator(0), TINY)
    assert run is not None and run.weights.grad_loss < run.latent.grad_loss
    assert torch.equal(run.latent.labels, analytic.recover_labels(hidden[0].updates[0], hidden[0].model).cpu())


def test_bad_input_gets_a_clear_error(private, victim):
    images, labels = private
    rounds = list(fl.fl_rounds(images, labels, victim, 2, seed=0))
    g = generators.untrained_generator(0)
    for step_size in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"step_size must be in \(0, 1\]"):
            giml.meta_train(rounds, g, 1, step_size=step_size)
        with pytest.raises(ValueError, match=r"step_size must be in \(0, 1\]"):
            giml.reptile_step(g, [g], step_size)
    with pytest.raises(ValueError, match="num_steps must be at least 1"):
        giml.meta_train(rounds, g, 0)
    with pytest.raises(ValueError, match="num_rounds"):
        next(fl.fl_rounds(images, labels, victim, 0))
    with pytest.raises(ValueError, match="fedsgd_every=None: a frozen victim"):
        next(fl.fl_rounds(images, labels, victim, 1, fedsgd_every=0))
    with pytest.raises(ValueError, match="larger than the stream's 2"):
        giml.meta_train(rounds, g, 1, meta_batch=3)
    with pytest.raises(ValueError, match="ran out"):
        giml.meta_train(iter(rounds), g, 3, inner=giml.InnerSettings(latent_iters=2, weight_iters=2), progress=False)
    other = models.build_model("convnet_gap", in_channels=1)
    mismatched = [fl.FLRound(0, other, rounds[0].updates)]
    with pytest.raises(ValueError, match="does not match the model|trainable parameters"):
        giml.meta_train(mismatched, g, 1)
    with pytest.raises(ValueError, match="outer"):
        giml.meta_train(rounds, g, 1, outer="sgd")


def test_snapshots_round_trip_in_half_precision(tmp_path):
    g = _perturbed(generators.untrained_generator(0), 0.05, 1)
    generators.save_checkpoint(g, giml.snapshot_path(7, tmp_path), half=True, meta_steps=7)
    generators.save_checkpoint(g, giml.snapshot_path(12, tmp_path), half=True, meta_steps=12)
    assert giml.shipped_steps(tmp_path) == [7, 12]
    loaded = giml.load_snapshot(folder=tmp_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for a, b in zip(g.parameters(), loaded.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    with pytest.raises(FileNotFoundError, match=r"shipped: \[7, 12\]"):
        giml.load_snapshot(3, folder=tmp_path)
    with pytest.raises(FileNotFoundError, match="no GIML snapshots"):
        giml.load_snapshot(folder=tmp_path / "empty")
    # a second run's series lives beside the first under its own prefix
    generators.save_checkpoint(g, giml.snapshot_path(30, tmp_path, "other_r"), half=True, settings={"epsilon": 0.2})
    assert giml.shipped_steps(tmp_path, "other_r") == [30] and giml.shipped_steps(tmp_path) == [7, 12]
    assert giml.snapshot_record(folder=tmp_path, prefix="other_r")["settings"] == {"step_size": 0.2}
    path = giml.snapshot_path(30, tmp_path, "other_r")
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        giml.load_snapshot(folder=tmp_path, prefix="other_r")


def test_the_shipped_records_name_their_files_and_hashes():
    for step in giml.shipped_steps():
        record = giml.snapshot_record(step)
        assert record["file"] == giml.snapshot_path(step).name and record["meta_steps"] == step
        assert record["trained_on"] == "gradients" and "step_size" in record["settings"]
        assert json.loads(giml.snapshot_path(step).with_suffix(".json").read_text())["sha256"] == record["sha256"]


def test_a_task_whose_search_diverges_moves_nothing(private, victim):
    images, labels = private
    rounds = list(fl.fl_rounds(images, labels, victim, 1, seed=0))
    w = generators.untrained_generator(0)
    with torch.no_grad():
        w.net[1].running_var.fill_(-1.0)  # a broken BatchNorm: every image is NaN
    w_prime, run = giml.inner_round(rounds[0].updates[0], rounds[0].model, w, TINY)
    assert run is None  # the latent search diverged: no run to build on
    assert all(torch.equal(a, b) for a, b in zip(w.parameters(), w_prime.parameters()))
    assert w_prime is not w


def test_chapter_priors_load_hash_checked_with_what_they_were_learned_from():
    from gi_tutorial import threats

    priors = giml.priors()
    assert list(priors) == list(giml.PRIORS)
    learned = {
        "untrained": "nothing",
        "GIML": "gradients",
        "GIML, batch-4 stream": "gradients",
        "non-meta": "gradients",
        "DCGAN": "data",
    }
    for name, g in priors.items():
        assert g.trained_on == learned[name], name
        expected = threats.DATA_ENHANCED if name == "DCGAN" else threats.PARAMETER_AWARE
        assert threats.threat_model_for(g) == expected, name
    with pytest.raises(ValueError, match="unknown priors"):
        giml.priors(["GIML", "StyleGAN"])
    names = [r.name for r in giml.prior_battery(giml.attacks.BUDGETS["ch5"], ("untrained", "GIML"))]
    assert names == ["GI-x", "GIAS (untrained)", "GIAS (GIML)", "sample (untrained)", "sample (GIML)", "label only"]


def test_chapter_claims_on_both_scores_with_their_margins_and_the_target():
    tally = stats.Tally(("victim", "batch", "seed", "method"))
    for seed, (a, b) in enumerate([(0.75, 0.5), (0.875, 0.625), (0.625, 0.5)]):
        row = dict(victim="S", batch=8, seed=seed)
        tally.add(**row, method="GIAS (GIML)", identified=a, psnr=20.0 + seed)
        tally.add(**row, method="GIAS (untrained)", identified=b, psnr=20.5 + seed)
        tally.add(**row, method="GIAS (non-meta)", identified=a, psnr=20.0)
    found = {
        c.metric: c for c in giml.chapter_claims([{"victim": "S", "batch": 8}], [("GIAS (GIML)", "GIAS (untrained)")])
    }
    assert list(found) == ["identified", "psnr"]
    assert claims.outcome(found["identified"].paired(tally)) == "ahead"  # +12.5 to +25 points, margin 5
    assert found["identified"].sentence(tally).endswith("GIAS (GIML) wins")
    assert claims.outcome(found["psnr"].paired(tally)) == "no clear winner"  # 0.5 dB behind: inside the 1 dB margin
    assert len(giml.CLAIMS) == len(giml.CASES) * len(giml.COMPARISONS) * 2
    assert giml.target_met(tally, victim="S", batch=8) == (True, pytest.approx(0.20833, abs=1e-4), 0.0)


def test_distance_trend_counts_only_a_change_beyond_twice_its_standard_error():
    assert giml.distance_trend([0.10, 0.11, 0.09, 0.10, 0.30, 0.31, 0.29, 0.30]).word == "rises"
    assert giml.distance_trend([0.30, 0.31, 0.29, 0.30, 0.10, 0.11, 0.09, 0.10]).word == "falls"
    level = giml.distance_trend([0.10, 0.30, 0.20, None, 0.25, 0.15, 0.10, 0.30, 0.20])
    assert level.word == "stays level" and level.first.n == 2  # the None (a diverged task) is skipped
    with pytest.raises(ValueError, match="every task diverged"):
        giml.distance_trend([None, None])
