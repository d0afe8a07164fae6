"""Training throughput (images/s) of the production training step, bf16 against fp32,
interleaved in one run.

    .venv/bin/python -m bench.train_throughput [--model model/default] [--images 512]
        [--batch 128] [--rounds 3] [--device cuda]

Times :func:`model.training.train_one_epoch` (the loop ``triplet-embed train`` and the
service's jobs run) with the parts :func:`model.training.build_training` builds from the
default model's recipe (losses, mining, optimiser, weight average, augmentation), on
``--images`` real training images of its data set: one unit of work is one pass over them.
Only ``bf16`` differs between the two variants, and the network starts from random weights
(the recipe's starting checkpoint is not needed to time a step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import interleaved, print_table
from model.checkpoint import read_card
from model.recipe import TrainRecipe
from model.training import build_training, prepare_data, train_one_epoch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("model/default"))
    parser.add_argument("--images", type=int, default=512, help="real training images")
    parser.add_argument("--batch", type=int, help="default: the recipe's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    recipe_fields = {
        **read_card(args.model).recipe,
        "init_from": None,
        "pretrained": None,
        "device": args.device,
    }
    if args.batch:
        recipe_fields["batch_size"] = args.batch
    base = TrainRecipe(**recipe_fields)
    classes = len(base.classes or []) or 2
    data = prepare_data(base.model_copy(update={"max_per_class": args.images // classes}))
    print(
        f"{len(data.train)} real training images, batch {base.batch_size}, "
        f"{base.input_size} px, {base.stem} stem, {base.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    def epoch_runner(bf16: bool):  # type: ignore[no-untyped-def]
        recipe = base.model_copy(update={"bf16": bf16})
        setup = build_training(recipe, data.train)
        epochs = iter(range(1_000_000))

        def one_pass() -> int:
            epoch = next(epochs)
            setup.sampler.set_epoch(epoch)
            stats = train_one_epoch(
                setup.net,
                setup.objective,
                setup.optimizer,
                data.train,
                setup.sampler,
                setup.augmentation,
                bf16=bf16,
                schedule=setup.schedule,
                first_step=epoch * len(setup.sampler),
                ema=setup.ema,
            )
            return stats.steps * base.batch_size

        return one_pass

    rates = interleaved(
        {"fp32": epoch_runner(False), "bf16 autocast + channels_last": epoch_runner(True)},
        rounds=args.rounds,
        pause=0.5,
    )
    print_table("production training step (train_one_epoch)", rates, "fp32", "images/s")


if __name__ == "__main__":
    main()
