"""crbp-d2: contractor recurrent back-propagation (C-RBP) for PyTorch and Detectron2."""

from setuptools import find_packages, setup

PATHFINDER = [
    "scipy",
    "matplotlib",
    "tqdm",
    "pyyaml",
    "yacs>=0.1.8",
    "Pillow>=7.1",
    "opencv-python-headless",
]
TORCHVISION = [
    "torchvision",
    "pycocotools>=2.0.2",
    "Pillow>=7.1",
    "scipy",
    "opencv-python-headless",
]
EXTRAS = {
    # crbp_d2.pathfinder and crbp_d2.contours
    "pathfinder": PATHFINDER,
    # the Detectron2 front-end: everything but Detectron2 itself
    "d2": PATHFINDER
    + [
        "tensorboard",
        "torchvision",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools>=2.0.2",
        "hotcoco>=1.3",
    ],
    # crbp_d2.tv: the recurrent mask head in torchvision's Mask R-CNN (OpenCV / SciPy generate
    # the synthetic shapes set)
    "torchvision": TORCHVISION,
    # crbp_d2.onnx_export: ONNX export of the fixed-step head and its onnxruntime check
    "onnx": ["onnx", "onnxscript", "onnxruntime"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="crbp-d2",
    version="0.2.0",
    description="Contractor recurrent back-propagation (C-RBP): recurrent vision models with "
    "constant memory in the number of steps, for Pathfinder and Detectron2 Panoptic FPN.",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["crbp_d2", "crbp_d2.*"]),
    # The core (crbp_d2.recurrent) needs torch and numpy only; each front-end has an extra and,
    # imported without it, says in one line which (crbp_d2._extras). Detectron2 is deliberately
    # not listed: it is not on PyPI; tools/install_detectron2.sh installs it (or keep your own
    # upstream build). requirements.txt (the dev / CI environment) pins everything.
    install_requires=["torch>=2.1", "numpy"],
    extras_require=EXTRAS,
    # Every command-line program: crbp_d2/cli/NAME.py with main(argv=None) -> int, installed as
    # crbp-NAME (dashes for underscores); tools/NAME.py runs the same program from a checkout.
    entry_points={
        "console_scripts": [
            # Detectron2 side (needs the d2 extra) and benchmarks
            "crbp-train-net = crbp_d2.cli.train_net:main",
            "crbp-lazyconfig-train-net = crbp_d2.cli.lazyconfig_train_net:main",
            "crbp-timestep-sweep = crbp_d2.cli.timestep_sweep:main",
            "crbp-demo = crbp_d2.cli.demo:main",
            "crbp-benchmark-memory = crbp_d2.cli.benchmark_memory:main",
            "crbp-benchmark-rfpn = crbp_d2.cli.benchmark_rfpn:main",
            "crbp-update-readme = crbp_d2.cli.update_readme:main",
            "crbp-rfpn-cpu-protocol = crbp_d2.cli.rfpn_cpu_protocol:main",
            "crbp-benchmark-methods = crbp_d2.cli.benchmark_methods:main",
            "crbp-cuda-rfpn-check = crbp_d2.cli.cuda_rfpn_check:main",
            "crbp-cuda-check-summary = crbp_d2.cli.cuda_check_summary:main",
            "crbp-rfpn-finetune = crbp_d2.cli.rfpn_finetune:main",
            "crbp-rfpn-resume-check = crbp_d2.cli.rfpn_resume_check:main",
            "crbp-benchmark-solvers = crbp_d2.cli.benchmark_solvers:main",
            # Pathfinder
            "crbp-generate-pathfinder = crbp_d2.cli.generate_pathfinder:main",
            "crbp-train-pathfinder = crbp_d2.cli.train_pathfinder:main",
            "crbp-pathfinder-baselines = crbp_d2.cli.pathfinder_baselines:main",
            "crbp-pathfinder-generalization = crbp_d2.cli.pathfinder_generalization:main",
            "crbp-pathfinder-steps = crbp_d2.cli.pathfinder_steps:main",
            "crbp-pathfinder-state-space = crbp_d2.cli.pathfinder_state_space:main",
            "crbp-pathfinder-timecourse = crbp_d2.cli.pathfinder_timecourse:main",
            "crbp-pathfinder-cpu-protocol = crbp_d2.cli.pathfinder_cpu_protocol:main",
            "crbp-pathfinder-extrapolation = crbp_d2.cli.pathfinder_extrapolation:main",
            "crbp-cuda-pathfinder-check = crbp_d2.cli.cuda_pathfinder_check:main",
            "crbp-benchmark-generator = crbp_d2.cli.benchmark_generator:main",
            "crbp-migrate-pathfinder-checkpoint = crbp_d2.cli.migrate_pathfinder_checkpoint:main",
            # torchvision
            "crbp-train-tv-maskrcnn = crbp_d2.cli.train_tv_maskrcnn:main",
        ],
    },
)
