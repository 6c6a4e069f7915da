#!/usr/bin/env python3
"""Runs `ptjf train` on every worker of a Cloud TPU VM pod (prints the commands; --run runs them).

    python launch/tpu_pod.py --tpu=my-pod --zone=us-central2-b --repo=URL -- \\
        --gin_file=runs/ptjf.gin --gin.MODEL_DIR="'gs://bucket/run'"

Two `gcloud compute tpus tpu-vm ssh --worker=all` commands: one installs ptjf at `--ref` on
every worker (git, a venv, `jax[tpu]`), the other starts the same `ptjf train` on every
worker. A pod needs every host to run the same program; `jax.distributed.initialize()` finds
each host's place from the TPU VM's metadata, so nothing per-worker is passed here.

`--commands FILE` runs the blocks of `ptjf sweep --emit` instead, in order: `ptjf train` and
`ptjf switch` (which places the parameters on the whole mesh) on every worker, any other
command on worker 0 only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence

import emitted

LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
# Subcommands every host of a pod runs together; the others are one process, on worker 0.
ALL_WORKERS = {"train", "switch"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpu_pod.py",
        description="Install ptjf on a Cloud TPU VM pod and run `ptjf train` on every worker.",
        epilog="Everything after `--` is passed to `ptjf train` on every worker.",
    )
    p.add_argument("--tpu", help="the TPU VM (pod) name")
    p.add_argument("--zone", help="its zone, e.g. us-central2-b")
    p.add_argument("--project", help="its Google Cloud project (default: gcloud's)")
    p.add_argument("--repo", help="git URL (or path on the workers) to clone ptjf from")
    p.add_argument("--ref", default="main", help="branch, tag or commit to check out (main)")
    p.add_argument("--dir", default="ptjf", help="checkout on each worker, from $HOME (ptjf)")
    p.add_argument("--venv", default=".venv", help="venv, relative to --dir (.venv)")
    p.add_argument("--commands", help="a file of `ptjf sweep --emit` output to run block by block")
    p.add_argument("--skip_install", action="store_true", help="ptjf is already installed")
    p.add_argument("--run", action="store_true", help="run the commands (default: print them)")
    return p


def ssh(args: argparse.Namespace, remote: str, worker: str = "all") -> list[str]:
    """The gcloud argv that runs the shell string `remote` on `worker` of the pod."""
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}"]
    if args.project:
        argv.append(f"--project={args.project}")
    return [*argv, f"--worker={worker}", f"--command={remote}"]


def install_script(repo: str, ref: str, directory: str, venv: str) -> str:
    """Shell run on every worker: clone (once), check out `ref`, venv, ptjf[data] + jax[tpu]."""
    d, v = shlex.quote(directory), shlex.quote(venv)
    return "; ".join(
        [
            "set -e",
            f"[ -d {d}/.git ] || git clone --quiet {shlex.quote(repo)} {d}",
            f"cd {d}",
            f"git fetch --quiet origin {shlex.quote(ref)}",
            "git checkout --quiet --detach FETCH_HEAD",
            f"[ -x {v}/bin/python ] || python3 -m venv {v}",
            f"{v}/bin/pip install --quiet -e '.[data]' 'jax[tpu]' -f {LIBTPU_RELEASES}",
        ]
    )


def ptjf_script(directory: str, venv: str, argv: Sequence[str]) -> str:
    """Shell that runs one `ptjf …` argv from the checkout, each argument quoted once."""
    return f"cd {shlex.quote(directory)} && {shlex.quote(venv)}/bin/{shlex.join(argv)}"


def plan(args: argparse.Namespace, blocks: Sequence[emitted.Block]) -> list[tuple[str, list[str]]]:
    """(comment, gcloud argv) for every command, in the order they run."""
    steps: list[tuple[str, list[str]]] = []
    if not args.skip_install:
        script = install_script(args.repo, args.ref, args.dir, args.venv)
        steps.append((f"install ptjf {args.ref} on every worker", ssh(args, script)))
    for block in blocks:
        for argv in block.commands:
            worker = "all" if argv[1] in ALL_WORKERS else "0"
            where = "every worker" if worker == "all" else "worker 0"
            steps.append(
                (
                    f"{block.name}: ptjf {argv[1]} on {where}",
                    ssh(args, ptjf_script(args.dir, args.venv, argv), worker),
                )
            )
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    own, train = emitted.split_argv(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(own)
        missing = [f"--{k}" for k in ("tpu", "zone") if not getattr(args, k)]
        if missing:
            parser.error(
                f"{' and '.join(missing)} required: name the pod, e.g. --tpu=my-pod "
                "--zone=us-central2-b."
            )
        if args.commands and train:
            parser.error("give either --commands FILE or `-- ptjf train` arguments, not both.")
        if not args.skip_install and not args.repo:
            parser.error(
                "--repo required to install ptjf on the workers (a git URL), or pass "
                "--skip_install when it is already installed."
            )
        if args.commands:
            try:
                with open(args.commands, encoding="utf-8") as f:
                    blocks = emitted.read_blocks(f.read())
            except (OSError, ValueError) as e:
                parser.error(f"--commands {args.commands}: {e}")
            if not blocks:
                parser.error(f"--commands {args.commands} holds no ptjf commands.")
        elif train:
            blocks = [emitted.Block("train", (), (("ptjf", "train", *train),))]
        else:
            parser.error(
                "no `ptjf train` arguments: add them after `--`, e.g. "
                "-- --gin_file=runs/ptjf.gin (or give --commands FILE)."
            )
    except SystemExit as e:
        return int(e.code or 0)

    steps = plan(args, blocks)
    if not args.run:
        print("# dry run: add --run to run these")
        for comment, cmd in steps:
            print(f"# {comment}\n{shlex.join(cmd)}")
        return 0
    for i, (comment, cmd) in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {comment}\n$ {shlex.join(cmd)}", flush=True)
        try:
            code = subprocess.run(cmd, check=False).returncode
        except FileNotFoundError:
            print(
                "tpu_pod.py: gcloud not found: install the Google Cloud CLI "
                "(https://cloud.google.com/sdk) and log in.",
                file=sys.stderr,
            )
            return 127
        if code != 0:
            print(
                f"tpu_pod.py: step {i}/{len(steps)} ({comment}) failed with exit status "
                f"{code}; the {len(steps) - i} later step(s) were not run.",
                file=sys.stderr,
            )
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
