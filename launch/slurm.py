#!/usr/bin/env python3
"""Writes an sbatch script that runs `ptjf train` on N GPU nodes (prints it; --submit submits it).

    python launch/slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu -- \\
        --gin_file=runs/ptjf.gin --gin.MODEL_DIR="'/shared/runs/ptjf'"

The script (launch/slurm_template.sbatch, filled in here) asks for one task per node and
`srun`s the same `ptjf train` on every node; `jax.distributed.initialize()` reads SLURM's
variables to find the coordinator and each process's rank, and JAX_LOCAL_DEVICE_IDS gives each
process all of its node's GPUs.

`--commands FILE` writes one script per block of `ptjf sweep --emit` instead; `--submit` then
submits them with `--dependency=afterok:` on the blocks each one forks from.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

import emitted

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_template.sbatch")
_TIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
# Subcommands every node runs together; the others are one process (`ptjf switch`).
ALL_NODES = {"train"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slurm.py",
        description="Write (and optionally submit) an sbatch script running `ptjf train`.",
        epilog="Everything after `--` is passed to `ptjf train` on every node.",
    )
    p.add_argument("--nodes", type=int, help="nodes, one ptjf process each")
    p.add_argument("--gpus_per_node", type=int, help="GPUs per node")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--time", help="time limit, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--account", help="account to charge")
    p.add_argument("--job_name", default="ptjf", help="job name (ptjf)")
    p.add_argument("--workdir", default=os.getcwd(), help="ptjf checkout, on shared storage")
    p.add_argument("--venv", default=".venv", help="venv with ptjf, relative to --workdir")
    p.add_argument(
        "--out", help="where to write the script (./ptjf_JOB.sbatch; a folder with --commands)"
    )
    p.add_argument("--commands", help="a file of `ptjf sweep --emit` output: one job per block")
    p.add_argument("--submit", action="store_true", help="run sbatch (default: print only)")
    return p


def srun_line(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """`srun` for one `ptjf …` argv: on every node for train, one task otherwise."""
    if argv[1] in ALL_NODES:
        where = f"--nodes={args.nodes} --ntasks-per-node=1"
    else:
        where = "--nodes=1 --ntasks=1"
    return f"srun {where} {shlex.quote(args.venv)}/bin/{shlex.join(argv)}"


def render(args: argparse.Namespace, block: emitted.Block, job_name: str) -> str:
    """The sbatch script for one block of ptjf commands."""
    extra = [
        f"#SBATCH --{flag}={value}"
        for flag, value in (
            ("partition", args.partition),
            ("time", args.time),
            ("account", args.account),
        )
        if value
    ]
    with open(TEMPLATE, encoding="utf-8") as f:
        text = f.read()
    if not extra:
        text = text.replace("{{extra_sbatch}}\n", "")
    values = {
        "title": f"{block.name}" + (f" (after: {', '.join(block.deps)})" if block.deps else ""),
        "job_name": job_name,
        "nodes": str(args.nodes),
        "gpus_per_node": str(args.gpus_per_node),
        "extra_sbatch": "\n".join(extra),
        "local_device_ids": ",".join(str(i) for i in range(args.gpus_per_node)),
        "workdir": shlex.quote(args.workdir),
        "commands": "\n".join(srun_line(args, argv) for argv in block.commands),
    }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, train: list[str]) -> None:
    for flag in ("nodes", "gpus_per_node"):
        value = getattr(args, flag)
        if value is None or value < 1:
            parser.error(
                f"--{flag} required, a positive number (e.g. --nodes=2 --gpus_per_node=8)."
            )
    if args.time and not _TIME.match(args.time):
        parser.error(f"--time {args.time!r}: write it as HH:MM:SS or D-HH:MM:SS (e.g. 24:00:00).")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.job_name):
        parser.error(f"--job_name {args.job_name!r}: use letters, digits, '_', '.', '-' only.")
    if args.commands and train:
        parser.error("give either --commands FILE or `-- ptjf train` arguments, not both.")
    if not args.commands and not train:
        parser.error(
            "no `ptjf train` arguments: add them after `--`, e.g. "
            "-- --gin_file=runs/ptjf.gin (or give --commands FILE)."
        )


def main(argv: Sequence[str] | None = None) -> int:
    own, train = emitted.split_argv(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(own)
        _check(parser, args, train)
        if args.commands:
            try:
                with open(args.commands, encoding="utf-8") as f:
                    blocks = emitted.read_blocks(f.read())
            except (OSError, ValueError) as e:
                parser.error(f"--commands {args.commands}: {e}")
            if not blocks:
                parser.error(f"--commands {args.commands} holds no ptjf commands.")
        else:
            blocks = [emitted.Block("train", (), (("ptjf", "train", *train),))]
    except SystemExit as e:
        return int(e.code or 0)

    jobs: list[tuple[emitted.Block, str]] = []  # (block, script path)
    for i, block in enumerate(blocks):
        if args.commands:
            job = f"{args.job_name}-{i:02d}"
            path = os.path.join(args.out or ".", f"ptjf_{job}.sbatch")
        else:
            job = args.job_name
            path = args.out or f"ptjf_{job}.sbatch"
        text = render(args, block, job)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"# {path}\n{text}")
        jobs.append((block, path))

    if not args.submit:
        print(f"# dry run: wrote {len(jobs)} script(s); add --submit to run sbatch")
        return 0
    return submit(jobs, chained=bool(args.commands))


def submit(jobs: Sequence[tuple[emitted.Block, str]], chained: bool) -> int:
    """sbatch each script; emitted blocks wait (afterok) for the blocks they fork from."""
    ids: dict[str, str] = {}
    for block, path in jobs:
        if chained:
            after = [ids[d] for d in block.deps if d in ids]
            cmd = ["sbatch", "--parsable"]
            cmd += [f"--dependency=afterok:{':'.join(after)}"] if after else []
            cmd.append(path)
        else:
            cmd = ["sbatch", path]
        print(f"$ {shlex.join(cmd)}", flush=True)
        try:
            done = subprocess.run(cmd, check=False, capture_output=chained, text=True)
        except FileNotFoundError:
            print(
                "slurm.py: sbatch not found: run this on the cluster's login node.", file=sys.stderr
            )
            return 127
        if done.returncode != 0:
            print(
                f"slurm.py: `{shlex.join(cmd)}` failed with exit status {done.returncode}"
                + (f": {done.stderr.strip()}" if chained and done.stderr else "")
                + "; later scripts were not submitted.",
                file=sys.stderr,
            )
            return done.returncode
        if chained:
            ids[block.name] = done.stdout.strip().split(";")[0]
            print(f"submitted {block.name} as job {ids[block.name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
