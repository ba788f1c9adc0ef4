"""workbench export: the backbone alone, with plain keys and a JSON description, loads without the workbench into
timm.create_model / a torchvision ResNet / a plain torch Sequential and gives the workbench's features."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from workbench.cli import main
from workbench.models import build_backbone
from workbench.trained import Trained, load_backbone, load_trained
from workbench.trained.export import export_backbone

# What a user writes after reading backbone.json (the module docstring of workbench/trained/export.py): no workbench.
LOADER = r'''
import json, sys
import torch, torch.nn as nn

def model_of(folder):
    d = json.load(open(f"{folder}/backbone.json"))
    path = f"{folder}/{d['file']}"
    if d["format"] == "safetensors":
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, weights_only=True)
    if "timm" in d:
        import timm
        model = timm.create_model(d["timm"]["model_name"], **d["timm"]["kwargs"])
    elif "torchvision" in d:
        import torchvision
        model = torchvision.models.get_model(d["torchvision"]["model_name"])
        if d["torchvision"]["small_stem"]:
            model.conv1 = nn.Conv2d(d["in_chans"], 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        model.fc = nn.Identity()
    else:
        model = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, s, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
                                for a, b, s in d["torch"]["layers"]])
    model.load_state_dict(sd)  # strict: every key of the export is used, none is missing
    model.eval()
    return (lambda x: model(x).mean((2, 3))) if "torch" in d else model

for folder in sys.argv[1:]:
    x, expected = torch.load(f"{folder}/check.pt", weights_only=True)
    with torch.no_grad():
        got = model_of(folder)(x)
    assert got.shape == expected.shape, (folder, got.shape, expected.shape)
    err = (got - expected).abs().max().item()
    assert err < 1e-4, (folder, err)
    print(folder, "max abs diff", err)
assert not any(m == "workbench" or m.startswith("workbench.") for m in sys.modules)
print("loaded without the workbench")
'''


def _with_batchnorm_statistics(backbone: torch.nn.Module, size: int) -> torch.nn.Module:
    """A few training-mode passes so BatchNorm running statistics differ from their initial values (exported too)."""
    backbone.train()
    with torch.no_grad():
        for _ in range(2):
            backbone(torch.randn(8, backbone.in_chans, size, size) * 2 + 0.5)
    return backbone.eval()


def _save_check(folder: Path, trained, seed: int = 0) -> None:
    """Normalised inputs and the workbench's features of them, for the loader subprocess to compare against."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, trained.in_chans, trained.image_size, trained.image_size, generator=g)
    with torch.no_grad():
        torch.save((x, trained.backbone.eval()(x)), folder / "check.pt")


def test_exports_load_without_the_workbench_and_give_its_features(tmp_path, tiny_run):
    torch.manual_seed(0)
    folders = []
    # resnet18 with the small-image stem, and vit_tiny: the workbench's short names, random weights
    for name, size, options in [("resnet18", 32, {}), ("vit_tiny", 16, {"patch_size": 4, "depth": 2})]:
        bb = build_backbone(name, size, **options)
        if name == "resnet18":
            _with_batchnorm_statistics(bb, size)
        else:
            torch.nn.init.normal_(bb.vit.pos_embed, std=0.5)  # timm starts positions near zero: make them matter
        trained = load_trained((bb.eval(), {"backbone": name, "backbone_options": options, "mean": [0.4] * 3,
                                            "std": [0.2] * 3}))
        out = tmp_path / name
        paths = export_backbone(trained, out)
        _save_check(out, trained)
        folders.append(out)
        desc = json.loads(paths["description"].read_text())
        assert desc["image_size"] == size and desc["mean"] == [0.4] * 3 and desc["feature_dim"] == bb.feature_dim
        assert desc["sha256"] == hashlib.sha256(paths["weights"].read_bytes()).hexdigest()
        meta = safetensors.safe_open(str(paths["weights"]), "pt").metadata()
        assert json.loads(meta["workbench"])["backbone"] == name  # the description travels inside the file too
    assert json.loads((tmp_path / "vit_tiny" / "backbone.json").read_text())["timm"] == {
        "model_name": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 16, "patch_size": 4, "in_chans": 3, "depth": 2, "num_classes": 0}}
    resnet = json.loads((tmp_path / "resnet18" / "backbone.json").read_text())["torchvision"]
    assert resnet["small_stem"] and resnet["replace"]["maxpool"] == "nn.Identity()"

    # timm specs: a ViT with register tokens from local weights, and a timm CNN
    ref = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, img_size=28, depth=1, patch_size=7)
    torch.nn.init.normal_(ref.reg_token, std=1.0)
    weights = tmp_path / "reg.safetensors"
    safetensors.torch.save_file(ref.state_dict(), str(weights))
    for spec, kw in [("timm:vit_small_patch14_reg4_dinov2", dict(image_size=28, weights=str(weights), depth=1,
                                                                  patch_size=7)),
                     ("timm:resnet18", dict(image_size=32))]:
        trained = load_backbone(spec, **kw)
        if spec == "timm:resnet18":
            _with_batchnorm_statistics(trained.backbone, 32)
        out = tmp_path / spec.replace(":", "_")
        export_backbone(trained, out, format="torch")
        _save_check(out, trained)
        folders.append(out)
    desc = json.loads((tmp_path / "timm_vit_small_patch14_reg4_dinov2" / "backbone.json").read_text())
    assert desc["timm"]["kwargs"] == {"depth": 1, "patch_size": 7, "num_classes": 0, "in_chans": 3, "img_size": 28}
    assert desc["mean"] == [0.485, 0.456, 0.406] and desc["source"]["spec"] == "timm:vit_small_patch14_reg4_dinov2"

    # small_cnn: a trained run, through the command line
    assert main(["export", str(tiny_run.path), "--format", "torch"]) == 0
    out = tiny_run.path / "export"
    assert (out / "backbone.pt").exists() and json.loads((out / "backbone.json").read_text())["source"]["step"] >= 1
    assert set(torch.load(out / "backbone.pt", weights_only=True)) == {
        k[len("stages."):] for k in load_trained(tiny_run).backbone.state_dict()}
    _save_check(out, load_trained(tiny_run))
    folders.append(out)

    done = subprocess.run([sys.executable, "-c", LOADER, *map(str, folders)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded without the workbench" in done.stdout and done.stdout.count("max abs diff") == 5


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    trained = load_backbone("timm:resnet18", image_size=32)
    with pytest.raises(ValueError, match=r"has no run folder to export into; pass out=DIR \(CLI: --out DIR\)"):
        export_backbone(trained)
    with pytest.raises(ValueError, match=r"format='onnx' is not supported; choose one of \['safetensors', 'torch'\]"):
        export_backbone(trained, tmp_path, format="onnx")
    bare = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="cannot describe a Sequential"):
        export_backbone(bare, tmp_path)
    options = {"patch_size": 8, "depth": 1, "pos_embed": False, "rope_theta": 100.0}
    nepa_vit = Trained(build_backbone("vit_tiny", 32, **options), backbone_name="vit_tiny", backbone_options=options,
                       image_size=32, in_chans=3)
    with pytest.raises(ValueError, match=r"transformer options \{'pos_embed': False, 'rope_theta': 100.0\}"):
        export_backbone(nepa_vit, tmp_path)  # timm's plain ViT has no RoPE: refused, not exported wrong
    assert main(["export", str(tmp_path / "no-such-run")]) == 2
    assert "neither a run folder nor a checkpoint file" in capsys.readouterr().err
