"""crbp-d2: contractor recurrent back-propagation (C-RBP) for PyTorch and Detectron2."""

from setuptools import find_packages, setup

setup(
    name="crbp-d2",
    version="0.1.0",
    description="Contractor recurrent back-propagation (C-RBP): recurrent vision models with "
    "constant memory in the number of steps, for Pathfinder and Detectron2 Panoptic FPN.",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["crbp_d2", "crbp_d2.*"]),
    # Detectron2 is deliberately not listed: it is not on PyPI; tools/install_detectron2.sh
    # installs it (or keep your own upstream build). The core (crbp_d2.recurrent) needs torch only.
    install_requires=[
        "torch>=2.1",
        "numpy",
        "scipy",
        "matplotlib",
        "tqdm",
        "tensorboard",
        "pyyaml",
    ],
    extras_require={
        "d2": [
            "torchvision",
            "fvcore>=0.1.5,<0.1.6",
            "iopath>=0.1.7,<0.1.10",
            "pycocotools>=2.0.2",
            "opencv-python-headless",
            "hotcoco>=1.3",
        ],
    },
)
