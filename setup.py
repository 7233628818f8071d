"""GenLIP-Train: pretrain GenLIP vision encoders with megatron-core TP, DeepSpeed pipeline and ZeRO."""

from setuptools import find_packages, setup

setup(
    name="genlip-train",
    version="0.1.0",
    description="Training system for GenLIP (generative language-image pre-training of ViTs)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["genlip", "genlip.*", "megatron_ext", "megatron_ext.*",
                                    "data_tools", "data_tools.*"]),
    install_requires=[
        # On a machine without CUDA install the CPU build first (run_scripts/install.sh does).
        "torch>=2.5",
        "megatron-core>=0.16,<0.18",
        "deepspeed>=0.19",
        "numpy",
        "pillow",
        "pyarrow",
        "pyyaml",
        "safetensors",
        # genlip.cluster.scaling: L-BFGS-B for the scaling-law fits.
        "scipy",
        "sentencepiece",
        "tensorboard",
        "tokenizers",
        "tqdm",
        "webdataset",
        "matplotlib",
        # genlip-eval's CIDEr/BLEU-4: the COCO caption scorers (their Bleu and Cider are pure Python; no Java).
        "pycocoevalcap>=1.2",
    ],
    extras_require={
        # GPU kernels. NVIDIA apex is built from NVIDIA's source, never from PyPI (its `apex` is unrelated).
        "gpu": ["flash-attn>=2.1"],
        "dev": ["pytest>=8"],
    },
    entry_points={
        "console_scripts": [
            "genlip-info=genlip.info:main",
            "genlip-demo=genlip.demo:main",
            "genlip-data=data_tools.cli:main",
            "genlip-train=genlip.train.cli:main",
            "genlip-export=genlip.weights.export_cli:main",
            "genlip-ckpt=genlip.train.ckpt_cli:main",
            "genlip-submit=genlip.cluster.submit:main",
            "genlip-sweep=genlip.cluster.sweep:main",
            "genlip-eval=genlip.eval.cli:main",
        ],
    },
)
