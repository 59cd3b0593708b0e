"""mmccd: unsupervised anomaly segmentation in multi-modal brain MRI.

MMCCD (Masked Modality Cycles with Conditional Diffusion; Liang et al., MMMI @ MICCAI 2023,
arXiv 2308.16150) and baselines behind one interface and one evaluation protocol.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import mmccd` stays light; `mmccd.Detector` loads torch on first use
    if name == "Detector":
        from mmccd.api import Detector

        return Detector
    raise AttributeError(f"module 'mmccd' has no attribute {name!r}")
