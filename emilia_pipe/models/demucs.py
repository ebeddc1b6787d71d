"""Where a Demucs separation model comes from (a name in torch's hub cache, or a local ``.th`` file) and
how it loads."""
from __future__ import annotations

from pathlib import Path

from emilia_pipe.models.refs import ModelUnavailableError, is_path_ref


def _hub_checkpoints(name: str) -> list[Path]:
    """Files Demucs stores in torch's hub cache for a named bag of models."""
    import torch
    import yaml
    from demucs.pretrained import REMOTE_ROOT

    bag = REMOTE_ROOT / f"{name}.yaml"
    if not bag.exists():
        raise ModelUnavailableError(f"separation model '{name}' is not a Demucs model name "
                                    f"(known: {sorted(p.stem for p in REMOTE_ROOT.glob('*.yaml'))})")
    sigs = yaml.safe_load(bag.read_text())["models"]
    files = {line.strip().split("-")[0]: line.strip() for line in (REMOTE_ROOT / "files.txt").read_text().splitlines()
             if line.strip().endswith(".th")}
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / Path(files[s]).name for s in sigs if s in files]


def separation_model_location(ref: str, config=None, download: bool = False) -> str:
    if is_path_ref(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"separation model file {path} does not exist")
        return str(path)
    checkpoints = _hub_checkpoints(ref)
    if not all(p.exists() for p in checkpoints):
        if not download:
            raise ModelUnavailableError(
                f"Demucs model '{ref}' is not in the local cache ({checkpoints[0].parent}). Get it with "
                f"'emilia-pipe models fetch --profile full' (needs network), point models.separation at a "
                f"local .th file, or disable separation (--set separate.enabled=false)."
            )
        load_separation_model(ref)  # demucs downloads into the torch hub cache
    return str(checkpoints[0].parent)


def load_separation_model(ref: str):
    if is_path_ref(ref):
        from demucs.states import load_model

        model = load_model(str(Path(ref).expanduser()))
    else:
        from demucs.pretrained import get_model

        model = get_model(ref)
    model.eval()
    return model
