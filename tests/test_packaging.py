"""The package outside its checkout: a wheel built from the sources carries the notebooks; installed into a fresh
venv (which sees this project's installed dependencies, so torch is neither downloaded nor replaced), `workbench
quickstart`, `workbench run <name>`, `workbench lab` and `workbench --version` work from a folder with no source
tree, and papermill runs the notebooks with the venv's own `ssl-workbench` kernel."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import workbench

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag(capsys):
    from workbench.cli import main as cli_main
    with pytest.raises(SystemExit) as stop:
        cli_main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"ssl-workbench {workbench.__version__}"


def test_run_takes_a_shipped_notebook_by_name_and_lab_uses_the_named_kernel(tmp_path, capsys):
    from workbench.experiments.cli_commands import lab_command
    from workbench.experiments.runner import KERNEL_NAME, find_notebook, jupyter_env, kernel_dir, notebooks_dir
    assert find_notebook("quickstart") == notebooks_dir() / "00_quickstart.ipynb"
    assert find_notebook("tutorial_03_collapse.ipynb").name == "tutorial_03_collapse.ipynb"
    with pytest.raises(FileNotFoundError, match="shipped: quickstart, "):
        find_notebook("no_such_notebook")
    assert f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}" in lab_command(tmp_path)
    assert jupyter_env()["JUPYTER_PATH"].split(os.pathsep)[0] == str(kernel_dir())


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_quickstart_outside_the_source_tree(tmp_path):
    # 1. build the wheel from a copy of the sources (no build/ or egg-info left in the checkout)
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ("workbench", "widgets", "notebooks"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = dist.glob("ssl_workbench-*.whl")

    # 2. a fresh venv that sees this project's site-packages (torch and the rest) through a .pth line, and the wheel
    #    installed into it without dependencies
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths()["purelib"])
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "project_dependencies.pth").write_text(f"{purelib}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    py, cli = venv / "bin" / "python", venv / "bin" / "workbench"
    work = tmp_path / "elsewhere"  # no source tree here or above
    work.mkdir()
    env = _clean_env(venv)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    probe = run(str(py), "-c", "import json, torch, workbench; print(json.dumps([workbench.__file__, "
                                "torch.__version__]))")
    where, torch_version = json.loads(probe.stdout)
    assert Path(where).is_relative_to(site) and torch_version.startswith("2.14.1"), probe.stderr
    assert run(str(cli), "--version").stdout.strip() == f"ssl-workbench {workbench.__version__}"

    # 3. a shipped notebook by name (validated before anything runs), the lab's working copy of the notebooks
    bad = run(str(cli), "run", "quickstart", "-p", "no_such_parameter", "1")
    assert bad.returncode != 0 and "no_such_parameter" in bad.stderr + bad.stdout
    lab = run(str(cli), "lab", "--dry-run", "--no-browser")
    assert lab.returncode == 0 and f"--ServerApp.root_dir={work / 'ssl-workbench-notebooks'}" in lab.stdout
    assert (work / "ssl-workbench-notebooks" / "00_quickstart.ipynb").exists()

    # 4. the main job at a tiny size, through papermill and the venv's own kernel
    done = run(str(cli), "quickstart", "--quiet", "-p", "epochs", "1", "-p", "n_images", "256", "-p", "n_eval", "256",
               "-p", "umap", "off", "-p", "batch_size", "64", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (run_dir,) = [p for p in (work / "runs").iterdir() if not p.name.startswith(".")]
    record = json.loads((run_dir / "parameters.json").read_text())
    assert record["kernel"] == "ssl-workbench" and Path(record["source_path"]).is_relative_to(site)
    spec = json.loads((venv / "share" / "jupyter" / "kernels" / "ssl-workbench" / "kernel.json").read_text())
    assert spec["argv"][0] == str(py)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert "knn_acc" in json.loads((run_dir / "summary.json").read_text())
    trained = [p for p in run_dir.rglob("env.json") if p.parent != run_dir]
    assert trained and all(json.loads(p.read_text())["git_commit"] is None for p in trained)  # not this checkout
