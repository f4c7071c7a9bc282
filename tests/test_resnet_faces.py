"""The faces task's ``encoder = "resnet18"``: a 13-million-parameter ResNet-18 face encoder (GroupNorm, so
Opacus DP-SGD takes it). Kept small: the models here see 16×16 images; the 13M count is from the formula
and from the built model at the default size (no data read)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from secure_fl.errors import SecureFLError, SpecError
from secure_fl.run.experiment import load_experiment, parse_experiment
from secure_fl.tasks.faces import ENCODER_DEFAULTS, faces_params
from secure_fl.tasks.models import FaceEncoder, ResNetFaceEncoder, resnet_face_param_count
from secure_fl.tasks.plugins import load_callable
from secure_fl.tasks.registry import build_task

TINY = {"n_sites": 2, "encoder": "resnet18", "image_size": [16, 16], "embedding_dim": 32}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_default_resnet18_faces_model_has_13_million_parameters():
    p = faces_params({"encoder": "resnet18"}, "[task]", 40, 10)  # the ORL task's keys, without reading ORL
    assert p["image_size"] == (112, 92) and p["embedding_dim"] == 320
    classes = 40 - p["heldout_identities"]
    assert classes == 30
    assert resnet_face_param_count(classes, p["embedding_dim"], p["image_size"]) == 13_147_294  # the docstrings' count
    model = ResNetFaceEncoder(classes, p["embedding_dim"], p["image_size"])
    assert _n_params(model) == 13_147_294
    body = sum(_n_params(m) for m in model.features[:-1])  # ResNet-18 without its fc (11,689,512 - 513,000), 1 channel
    assert body == 11_689_512 - 513_000 - 64 * 49 * 2


@pytest.mark.parametrize("size, dim, classes", [((16, 16), 32, 4), ((33, 17), 8, 7), ((56, 46), 64, 30)])
def test_the_count_formula_matches_the_built_model(size, dim, classes):
    assert resnet_face_param_count(classes, dim, size) == _n_params(ResNetFaceEncoder(classes, dim, size))


def test_a_tiny_resnet18_faces_task_keeps_the_embed_forward_contract_and_rebuilds_from_its_spec():
    task = build_task("synthetic-faces", TINY)
    model = task.make_model(0)
    assert isinstance(model, ResNetFaceEncoder)
    x = task.sites[0].x_train[:3]
    assert model(x).shape == (3, task.num_classes) and model.embed(x).shape == (3, 32)
    assert set(task.extra_metrics(model)) == {"gallery/top1", "gallery/top5"}
    target, kwargs = task.model_spec()
    rebuilt = load_callable(target, "model_spec")(**kwargs)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval(), model.eval()
    assert torch.equal(rebuilt(x), model(x))
    assert _n_params(model) == resnet_face_param_count(task.num_classes, 32, (16, 16))


def test_the_default_encoder_is_still_the_small_cnn():
    task = build_task("synthetic-faces", {"n_sites": 2})
    model = task.make_model(0)
    assert type(model) is FaceEncoder and task.embedding_dim == ENCODER_DEFAULTS["cnn"][1] == 64
    target, kwargs = task.model_spec()
    assert target == "secure_fl.tasks.models:FaceEncoder" and kwargs == {"num_classes": 10, "embedding_dim": 64}
    assert faces_params({}, "[task]", 40, 10)["image_size"] == (56, 46)


def test_opacus_accepts_the_resnet18_encoder_and_gives_per_example_gradients():
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    model = ResNetFaceEncoder(4, 16, (16, 16))
    assert ModuleValidator.validate(model, strict=False) == []
    gsm = GradSampleModule(model)
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 2])
    torch.nn.functional.cross_entropy(gsm(x), y).backward()
    for p in gsm.parameters():
        assert p.grad_sample is not None and p.grad_sample.shape[0] == 3  # one gradient per photograph


@pytest.mark.parametrize("key, value, match", [
    ("encoder", "resnet50", r"task\]?\.encoder: expected one of \['cnn', 'resnet18'\], found 'resnet50'"),
    ("encoder", 18, r"task\]?\.encoder: expected a string, found 18"),
    ("embedding_dim", 1, r"task\]?\.embedding_dim: must be >= 2"),
    ("image_size", [4, 4], r"task\]?\.image_size: expected \[height, width\] with integers >= 8"),
])
def test_bad_encoder_values_name_the_key(key, value, match):
    with pytest.raises(SecureFLError, match=match):
        build_task("synthetic-faces", {**TINY, key: value})
    with pytest.raises(SecureFLError, match=match):
        faces_params({"encoder": "resnet18", key: value}, "[task]", 40, 10)


def test_the_encoder_key_is_refused_with_a_typo():
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['encoders'\]"):
        faces_params({"encoders": "resnet18"}, "[task]", 40, 10)


def test_a_tiny_resnet18_trains_above_chance_under_plain_fedavg(tmp_path: Path):
    """Three rounds of FedAvg, two sites, 16×16 synthetic faces (10 classes): 0.45 accuracy here. Adam's
    first steps move every weight by about lr; at this tiny size lr = 1e-3 collapsed to one class, 1e-4 learns."""
    from secure_fl.run.federation import run_variant

    exp = parse_experiment({
        "name": "tiny-resnet", "protocols": ["plain-fedavg"], "seeds": [0], "rounds": 3,
        "task": {"name": "synthetic-faces", **TINY},
        "training": {"local_steps": 4, "batch_size": 8, "lr": 1e-4, "optimizer": "adam"},
    }, "tiny.toml")
    task = build_task(exp.task_name, exp.task_params)
    run = run_variant(exp, task, exp.variants[0], 0, tmp_path / "run")
    assert run.status == "finished" and task.num_classes == 10
    assert run.metrics["pooled/accuracy"] >= 2 / task.num_classes  # chance is 1 / 10


@pytest.mark.parametrize("name, sites", [("faces-resnet-13m", 4), ("faces-resnet-13m-16", 16)])
def test_the_13m_experiments_measure_ckks_and_secagg_plus_against_plaintext(name, sites):
    exp = load_experiment(name)
    assert [v.label for v in exp.variants] == ["plain-fedavg", "ckks-fedavg", "secagg-plus-fedavg"]
    assert exp.task_params["encoder"] == "resnet18" and exp.task_params["n_sites"] == sites
    assert exp.training.local_epochs == 1
