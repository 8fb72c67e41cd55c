"""gi_tutorial.attacks, yardstick, threats, metrics.identification: the battery and the floors it is measured against."""

from __future__ import annotations

import pytest
import torch

from gi_tutorial import attacks, data, fl, generators, metrics, models, stats, threats, yardstick


@pytest.fixture(scope="module")
def shipped():
    """The 20 Fashion-MNIST test images of the foolbox wheel: image 0 is the target, the other 19 the pool."""
    images, labels = data.fashion_mnist("test", data.NUM_SHIPPED)
    stick = yardstick.Yardstick(images[1:], labels[1:], images[1:], labels[1:], k=19, same_class=False)
    return images, labels, stick


def test_identification_ranks_the_truth_among_its_candidates():
    truth = torch.stack([torch.full((1, 4, 4), v) for v in (0.2, 0.6)])
    pool = torch.stack([torch.full((1, 4, 4), v) for v in (0.0, 0.3, 0.5, 0.2, 1.0)])
    labels, pool_labels = torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1, 1])
    close = metrics.identification(truth + 0.01, truth, pool)
    assert close.identified.tolist() == [True, True] and close.rank.tolist() == [1, 1]
    assert close.candidates.tolist() == [4, 5]  # the exact copy of truth[0] in the pool is left out
    # a reconstruction nearer to another image than to its own truth ranks below it
    off = metrics.identification(torch.stack([torch.full((1, 4, 4), 0.29), truth[1]]), truth, pool)
    assert off.identified.tolist() == [False, True] and off.rank[0] == 2
    same = metrics.identification(truth + 0.01, truth, pool, truth_labels=labels, candidate_labels=pool_labels, k=1)
    assert same.candidates.tolist() == [1, 1] and same.chance == pytest.approx(0.5)
    tie = metrics.identification(torch.full((1, 1, 4, 4), 0.4), truth[:1] * 0 + 0.3, pool[2:3] * 0 + 0.5)
    assert not tie.identified.item()  # equally far from the truth (0.3) and the candidate (0.5): a tie counts against
    with pytest.raises(ValueError, match="both truth_labels and candidate_labels"):
        metrics.identification(truth, truth, pool, truth_labels=labels)
    with pytest.raises(ValueError, match="no candidate"):
        metrics.identification(truth, truth, pool, truth_labels=labels, candidate_labels=torch.full((5,), 7))


def test_ssim_identification_agrees_on_a_clear_case(shipped):
    images, labels, stick = shipped
    noisy = (images[:1] + 0.05 * torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    for score in ("psnr", "ssim"):
        assert metrics.identification(noisy, images[:1], images[1:], score=score).identified.item()


def test_floors_use_no_gradient_and_the_labels_the_attacker_has(shipped):
    images, labels, stick = shipped
    model = models.build_model("convnet_fc", in_channels=1)
    update = fl.client_update(model, images[:2], labels[:2], share_labels=True)
    zeroed = update.replace(gradients=tuple(torch.zeros_like(g) for g in update.gradients))
    for floor in attacks.floors(None, mean_image=True):
        a = floor.run(update, model, image_shape=(1, 32, 32), generators={}, yardstick=stick, seed=0)
        b = floor.run(zeroed, model, image_shape=(1, 32, 32), generators={}, yardstick=stick, seed=0)
        assert torch.equal(a[floor.name].images, b[floor.name].images)  # the gradient plays no part
        assert a[floor.name].grad_loss is None
    label_only = (
        attacks.Floor("label only", "label only")
        .run(update, model, image_shape=(1, 32, 32), generators={}, yardstick=stick, seed=0)["label only"]
        .images
    )
    for b, label in enumerate(labels[:2].tolist()):
        members = images[1:][labels[1:] == label]
        expected = members.mean(0) if len(members) else images[1:].mean(0)
        assert torch.allclose(label_only[b], expected)


def test_a_gradient_attack_clears_its_floors_where_the_floors_cannot(shipped):
    """Victim A at batch 1 is nearly determined: GI-x with 150 steps copies the image, is identified among
    the 19 other shipped images, and beats the label-only guess by far; the guess is not identified."""
    images, labels, stick = shipped
    model = models.build_model("convnet_fc", in_channels=1)
    update = fl.client_update(model, images[:1], labels[:1], share_labels=True)
    tally = stats.Tally(keys=("method",))
    budget = attacks.Budget(x_iters=150, z_iters=2, z_restarts=1, w_iters=2)
    recipes = [attacks.gi_x(budget), *attacks.floors(None, mean_image=True)]
    shown = attacks.run_battery(
        update, model, recipes, truth=images[:1], truth_labels=labels[:1], yardstick=stick, tally=tally
    )
    assert set(shown) == {"GI-x", "label only", "mean image"}
    gi_x = tally.select(method="GI-x").rows[0]
    floor = tally.select(method="label only").rows[0]
    assert gi_x["psnr"] > 30 and gi_x["identified"] == 1.0 and gi_x["grad_loss"] < 1e-2
    assert floor["psnr"] < gi_x["psnr"] - 10 and floor["identified"] == 0.0
    assert gi_x["chance"] == pytest.approx(1 / 20)


def test_gias_records_its_latent_stage_and_states_its_threat_model(shipped):
    images, labels, stick = shipped
    model = models.build_model("convnet_fc", in_channels=1)
    update = fl.client_update(model, images[:2], labels[:2], share_labels=True)
    tally = stats.Tally(keys=("seed", "method"))
    recipes = attacks.battery(attacks.QUICK, methods=("GI-x", "GI-z", "GIAS"))
    shown = attacks.run_battery(
        update,
        model,
        recipes,
        truth=images[:2],
        truth_labels=labels[:2],
        yardstick=stick,
        generators={"dcgan": generators.load_generator()},
        tally=tally,
        seed=0,
    )
    assert tally.levels("method") == ["GI-x", "GIAS", "GI-z", "label only", "prior sample"]
    assert all(img.shape == (2, 1, 32, 32) for img in shown.values())
    gias, giz = tally.select(method="GIAS").rows[0], tally.select(method="GI-z").rows[0]
    assert gias["seconds"] > giz["seconds"]  # GIAS's time includes its latent stage
    text = str(recipes[1])
    assert "Jeon et al., 2021" in text and "threat model D" in text
    assert "threat model C" in str(recipes[0]) and "Geiping et al., 2020" in str(recipes[0])
    with pytest.raises(ValueError, match="generator 'giml'.*pass generators="):
        attacks.run_battery(
            update,
            model,
            [attacks.gi_z(attacks.QUICK, "giml")],
            truth=images[:2],
            truth_labels=labels[:2],
            yardstick=stick,
            generators={"dcgan": generators.load_generator()},
        )


def test_threat_models_add_knowledge_step_by_step():
    order = [threats.THREAT_MODELS[k] for k in "BCDE"]
    for weaker, stronger in zip(order, order[1:]):
        assert weaker.knows & stronger.knows == weaker.knows and weaker.knows != stronger.knows
    assert threats.threat_model_for(generators.load_generator()) is threats.DATA_ENHANCED
    assert threats.threat_model_for(generators.untrained_generator(0)) is threats.PARAMETER_AWARE
    with pytest.raises(ValueError, match="surrogate data"):
        threats.check(threats.Knowledge.SURROGATE_DATA, threats.PARAMETER_AWARE.knows, threats.PARAMETER_AWARE)


def test_budgets_are_named_and_shrink_in_quick_mode():
    assert attacks.budget_for("ch4") == attacks.QUICK  # the tests run in quick mode
    assert attacks.BUDGETS["ch4"].x_iters > attacks.QUICK.x_iters
    with pytest.raises(ValueError, match="unknown budget 'ch9'; expected one of ch4"):
        attacks.budget_for("ch9")
    with pytest.raises(ValueError, match="unknown methods"):
        attacks.battery("ch4", methods=("GI-y",))
