"""``--nproc-per-node N`` (and ``--nnodes M``): start a command as N local processes through
PyTorch's own launcher (``torch.distributed.run``, the code behind ``torchrun``), so
``mammo train --nproc-per-node 4 ...`` is ``torchrun --nproc-per-node 4 -m mammo.cli train ...``.

A failed process ends the whole job: torchrun stops the other processes, and the command
exits non-zero with one line naming the rank(s) that failed and how (their own one-line error
is printed above it, prefixed with the rank).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

from mammo.errors import MammoError

LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


class DistributedJobError(MammoError):
    """A process of a distributed job failed; the job as a whole has stopped."""

    exit_code = 1


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes (README: multi-GPU and multi-node)")
    group.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                       help="Processes on this machine, one per GPU; the global batch is split "
                       "across all of them (default: %(default)s).")
    group.add_argument("--nnodes", type=int, default=1, metavar="M",
                       help="Machines taking part, each started with the same command (default: %(default)s).")
    group.add_argument("--node-rank", type=int, default=0, metavar="R",
                       help="This machine's index, 0..M-1 (default: %(default)s).")
    group.add_argument("--master-addr", default="127.0.0.1", metavar="HOST",
                       help="Address of node 0, with --nnodes > 1 (default: %(default)s).")
    group.add_argument("--master-port", type=int, default=29500, metavar="PORT",
                       help="Port on node 0, with --nnodes > 1 (default: %(default)s).")


def wants_launch(args: argparse.Namespace) -> bool:
    """True when this process must start the workers itself (not already one of them)."""
    return (args.nproc_per_node > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ


def strip_launch_args(argv: list[str]) -> list[str]:
    """The command line without the launcher's flags (``--flag value`` and ``--flag=value``)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in LAUNCH_FLAGS:
            skip = True
        elif not item.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            kept.append(item)
    return kept


def describe_failure(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    return f"rank {rank} ({how})"


def launch(args: argparse.Namespace, argv: list[str]) -> None:
    """Run ``mammo <argv>`` as ``nproc_per_node`` processes on this node, and wait."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if args.nproc_per_node < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise MammoError(
            f"--nproc-per-node {args.nproc_per_node} --nnodes {args.nnodes} --node-rank {args.node_rank}: "
            "need N >= 1, M >= 1 and 0 <= R < M"
        )
    launcher = [f"--nproc-per-node={args.nproc_per_node}", "--max-restarts=0", "--monitor-interval=0.5"]
    if args.nnodes == 1:
        launcher.append("--standalone")
    else:
        launcher += [
            f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}",
            f"--master-addr={args.master_addr}", f"--master-port={args.master_port}",
        ]
    if not args.verbose:  # the workers' own lines say what went wrong
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args([*launcher, "-m", "mammo.cli", *strip_launch_args(argv)]))
    except ChildFailedError as err:
        failures = sorted(err.failures.items())
        # The launcher ends the survivors with SIGTERM; name the ranks that failed first.
        causes = [(r, f) for r, f in failures if f.exitcode != -signal.SIGTERM] or failures
        ranks = ", ".join(describe_failure(rank, failure.exitcode) for rank, failure in causes)
        raise DistributedJobError(f"distributed job stopped: {ranks} failed; the other processes were ended") from None
