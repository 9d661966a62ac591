"""`bnnflow train` and `bnnflow evaluate` on a user's own Brevitas network, on real CIFAR-10 images.

A network named as FILE.py:factory or package.module:factory trains through Brevitas' own forward (the fast
twin mirrors bnnflow's models only), resumes exactly, and its best.pt records how to rebuild it, so
`evaluate` and `build --checkpoint` take it with no glue code. The networks: bnn_pynq's FC (brevitas_examples,
not written here) and tests/user_nets/tiny_bnn.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnnflow.cli import main
from bnnflow.digest import file_sha256
from bnnflow.model_ref import USER_KEY
from bnnflow.models.checkpoint import load_checkpoint, read_checkpoint

from conftest import REPO, one_sentence
from user_nets.outside import FC_ARGS, FC_REF

pytestmark = pytest.mark.beside_image  # `make test`: in the Docker image's session (Makefile)

TINY = f"{REPO / 'tests' / 'user_nets' / 'tiny_bnn.py'}:TinyBNN"
SMALL = ["--subset", "256", "--val-size", "128", "--test-subset", "200", "--batch-size", "64", "--threads", "2",
         "--no-progress"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def fc_run(tmp_path_factory):
    """bnn_pynq's FC (0..1 pixels) trained for 2 epochs on 256 CIFAR-10 images."""
    out = tmp_path_factory.mktemp("user_train") / "fc"
    assert main(["train", FC_REF, *FC_ARGS, "--epochs", "2", *SMALL, "--out", str(out)]) == 0
    return out


def test_user_network_trains_through_brevitas_and_records_itself(fc_run, capsys):
    run = json.loads((fc_run / "run.json").read_text())
    assert run["engine"] == {"engine": "brevitas", "bf16": False, "compile": False}
    assert run["config"]["input_scale"] == "unit" and run["config"]["model_args"]["out_features"] == [64, 64]
    history = json.loads((fc_run / "log.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["train_loss"] < history[0]["train_loss"]
    best = read_checkpoint(fc_run / "best.pt")
    assert best[USER_KEY] == {"ref": FC_REF, "model_args": json.loads(FC_ARGS[1]), "input_scale": "unit"}
    # the binary weights stay float: a user's quantiser may scale by statistics of the latent weights
    assert all(v.dtype != torch.int8 for v in best["state_dict"].values())
    net, _ = load_checkpoint(fc_run / "best.pt")  # rebuilt from its reference, behind its 1/255 pixel scale
    assert net.scale is not None and net.scale.grid_step == pytest.approx(1 / 255)
    code, out, _ = cli(capsys, "runs", fc_run)  # the recipe table names it as its run and build folders do
    assert code == 0 and f"| {fc_run.name} | FC-FC | " in out


def test_recalibrate_keeps_a_user_network_rebuildable(fc_run, tmp_path, capsys):
    """`bnnflow recalibrate` on a user's best.pt: its Brevitas forward (behind the pixel scale) re-estimates
    the batch norms; the weights and the record of how to rebuild the network stay as they were."""
    history = json.loads((fc_run / "log.json").read_text())
    assert [r["bn_images"] for r in history] == [256, 256]  # precise batch norm in the run itself too
    out = tmp_path / "fc-bn.pt"
    code, text, _ = cli(capsys, "recalibrate", fc_run / "best.pt", "--out", out, "--bn-images", 128)
    assert code == 0 and "re-estimated over 128 training images" in text
    best, new = read_checkpoint(fc_run / "best.pt"), read_checkpoint(out)
    assert new[USER_KEY] == best[USER_KEY] and new["meta"]["bn_images"] == 128
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(v, new["state_dict"][k]) for k, v in best["state_dict"].items() if not k.endswith(stats))
    assert any(not torch.equal(v, new["state_dict"][k]) for k, v in best["state_dict"].items()
               if k.endswith("running_mean"))
    load_checkpoint(out)


@pytest.mark.build
def test_evaluate_builds_a_trained_user_network_and_agrees_image_for_image(fc_run, tmp_path, capsys):
    code, out, err = cli(capsys, "evaluate", fc_run / "best.pt", "--hw-images", 30, "--build", tmp_path / "b",
                         "--out", tmp_path / "eval.json", "--threads", 2)
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["agree"] and result["hardware"]["identical_integer_logits"] == 30
    assert "FC-FC: Brevitas top-1" in " ".join(out.split())  # named as its build folder names it
    state = json.loads((tmp_path / "b" / "build_state.json").read_text())  # the build's saved identity
    assert FC_REF in state["source"] and "input=unit" in state["source"]
    assert state["checkpoint_sha256"] == file_sha256(fc_run / "best.pt")


def test_user_run_resumes_exactly_from_another_directory(tmp_path, monkeypatch):
    """A FILE.py:factory run is recorded with the file's absolute path: --resume needs no model and works
    from anywhere, and 1 + 1 epochs equal 2 straight."""
    common = ["train", TINY, "--model-args", '{"width": 8}', "--epochs", "2", *SMALL, "--seed", "5"]
    assert main(common + ["--out", str(tmp_path / "straight")]) == 0
    assert main(common + ["--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", "--out", str(tmp_path / "split"), "--no-progress", "--threads", "2"]) == 0
    a, b = (read_checkpoint(tmp_path / r / "last.pt") for r in ("straight", "split"))
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] == 2
    assert a[USER_KEY]["ref"] == TINY and a[USER_KEY]["model_args"] == {"width": 8}
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["train_state"]["history"][-1]["test_top1"] == b["train_state"]["history"][-1]["test_top1"]


@pytest.mark.parametrize("extra, needle", [
    (["--engine", "fast"], "--engine fast trains bnnflow's own models only"),
    (["--variant", "wide"], "--variant is for bnnflow's own models"),
    (["--benchmark-steps", "4"], "nothing to compare"),
    (["--model-args", '{"width": 8, "classes": 7}'], "needs N x 10"),
    (["--model-args", '{"widht": 8}'], "check --model-args against the factory's parameters"),
])
def test_user_network_training_errors_are_one_sentence(tmp_path, capsys, extra, needle):
    code, _, err = cli(capsys, "train", TINY, "--epochs", "1", *SMALL, "--out", tmp_path / "run", *extra)
    assert code != 0 and needle in one_sentence(err)
    assert not (tmp_path / "run").exists()  # nothing is written before the network is known to train


@pytest.mark.parametrize("argv, needle", [
    (["train", "tests/user_nets/tiny.onnx"], "cannot be trained"),
    (["train", "cnv", "--input-scale", "unit"], "are for your own network"),
    (["train", "cnv", "--model-args", "{}"], "are for your own network"),
])
def test_what_cannot_train_is_one_sentence(tmp_path, capsys, argv, needle):
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "run")
    assert code != 0 and needle in one_sentence(err)


@pytest.mark.build
def test_the_readme_example_model_trains_and_verifies(tmp_path, monkeypatch, capsys):
    """The README's 30-line example network, copied out as a user would, trained by `bnnflow train` and
    verified bit-exact from its best.pt with the README's commands."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("# my_nets/tiny_bnn.py")
    (tmp_path / "my_nets").mkdir()
    (tmp_path / "my_nets" / "tiny_bnn.py").write_text(readme[start:readme.index("```", start)])
    monkeypatch.chdir(tmp_path)
    ref = "my_nets/tiny_bnn.py:TinyBNN"
    code, out, err = cli(capsys, "train", ref, "--epochs", 1, *SMALL, "--out", "runs/tiny")
    assert code == 0, err
    # the build command it suggests names the file absolutely (rich wraps lines anywhere: compare without spaces)
    assert f"'bnnflowbuild{tmp_path / 'my_nets' / 'tiny_bnn.py'}:TinyBNN--checkpoint" in "".join(out.split())
    code, out, err = cli(capsys, "verify", ref, "--checkpoint", "runs/tiny/best.pt", "--images", 20)
    assert code == 0, err
    verify = json.loads(next(Path("build").glob("*/verify.json")).read_text())
    assert verify["all_identical"], verify
