"""The ``towhee-rt`` command line (also ``python -m towhee_rt``).

    towhee-rt --version
    towhee-rt build MODULE:PIPELINE REPO [--model-name pipeline] [--overwrite]
    towhee-rt serve REPO [--grpc-port 8001] [--http-port 8000] [--host 127.0.0.1]
                         [--api-key-file FILE] [--admin-key-file FILE] [--verbose] ...
    towhee-rt quickstart --images DIR [--model-name resnet50] [--repo DIR]
    towhee-rt tune REPO [--out DIR] [--objective throughput|latency] [--time-budget S] ...
    towhee-rt deploy kubernetes REPO --image IMAGE [--out DIR] [--kserve] ...

``build`` writes a pipeline defined in Python as a model repository (:mod:`towhee_rt.cli_build`).
``serve`` starts tritonserver (the one carried by ``nvidia-pytriton`` unless ``--tritonserver
PATH`` or ``--docker IMAGE`` says otherwise), waits until the server and every model are ready,
prints the endpoints and blocks; Ctrl-C (SIGINT) or SIGTERM stops it gracefully, then forcibly
(:mod:`towhee_rt.cli_serve`). While it serves, a model whose Python stub dies or hangs is
reloaded and the recovery logged (:mod:`towhee_rt.triton.supervisor`); a model that keeps
dying stops the server. Endpoints bind 127.0.0.1 unless ``--host`` says otherwise.
``--api-key-file`` makes inference require the key in that file (a file, so that the key is
not on a command line ``ps`` shows); the admin APIs need ``--admin-key-file``'s key, or are
closed. Exit codes: 0 after a stop by signal, 1 when the server cannot start or dies or a model
keeps dying, 2 for a usage error (one line: a bad port, a bad key file...), 130 when
interrupted while starting. ``python -m towhee_rt.serve REPO`` is ``towhee-rt serve REPO``.

``quickstart`` is the README's demo (:mod:`towhee_rt.quickstart`); ``tune`` is
``python -m towhee_rt.tune`` (:mod:`towhee_rt.tune`); ``deploy`` is ``python -m towhee_rt.deploy``
(:mod:`towhee_rt.deploy`).
"""
from __future__ import annotations

from typing import List, Optional

from . import __version__, cli_build, cli_serve, quickstart
from .cli_args import Parser
from .deploy import cli as deploy_cli
from .tune import cli as tune_cli

SERVE_DESCRIPTION = cli_serve.DESCRIPTION


def main(argv: Optional[List[str]] = None, prog: str = "towhee-rt") -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = Parser(prog=prog, description="Serve embedding pipelines on NVIDIA Triton "
                                           "Inference Server.")
    parser.add_argument("--version", action="version", version=f"towhee_rt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build_parser = commands.add_parser("build", help="write a pipeline as a model repository",
                                       description=cli_build.DESCRIPTION)
    cli_build.add_arguments(build_parser)
    build_parser.set_defaults(run=cli_build.run)
    serve_parser = commands.add_parser("serve", help="serve a model repository",
                                       description=SERVE_DESCRIPTION)
    cli_serve.add_arguments(serve_parser)
    serve_parser.set_defaults(run=lambda args: cli_serve.run_serve(args, serve_parser))
    quick_parser = commands.add_parser("quickstart", help="build, serve and query a demo pipeline",
                                       description=quickstart.DESCRIPTION)
    quickstart.add_arguments(quick_parser)
    quick_parser.set_defaults(run=quickstart.run)
    tune_parser = commands.add_parser("tune", help="search a repository's serving settings",
                                      description=tune_cli.DESCRIPTION)
    tune_cli.add_arguments(tune_parser)
    tune_parser.set_defaults(run=lambda args: tune_cli.run(args, prog))
    deploy_parser = commands.add_parser("deploy", help="write Kubernetes / KServe manifests",
                                        description=deploy_cli.SUMMARY)
    deploy_cli.add_arguments(deploy_parser)
    deploy_parser.set_defaults(run=deploy_cli.run)
    args = parser.parse_args(argv)
    return args.run(args)


def serve_main(argv: Optional[List[str]] = None, prog: str = "python -m towhee_rt.serve") -> int:
    """``towhee-rt serve`` alone, as ``python -m towhee_rt.serve`` runs it; the exit code."""
    parser = Parser(prog=prog, description=SERVE_DESCRIPTION)
    cli_serve.add_arguments(parser)
    return cli_serve.run_serve(parser.parse_args(argv), parser)
