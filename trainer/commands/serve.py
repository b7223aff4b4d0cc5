"""Serve a trained adapter with vLLM (base model + LoRA module chosen by name) on 127.0.0.1 until Ctrl-C.

Prints the endpoint and the LlamaIndex / Haystack snippets that use it. With --hot-swap, loads --adapter into an
already running server under --name instead (vLLM runtime LoRA loading), then exits."""

from __future__ import annotations

import argparse
import signal
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="RUN_DIR_OR_ADAPTER",
                        help="a training run folder (its adapter/ is served) or a peft adapter folder")
    parser.add_argument("--base", metavar="MODEL",
                        help="base model id or path (default: the run's recorded base model, else the embedded SmolLM2)")
    parser.add_argument("--name", default="deepretrieval", help="model name clients ask for (default: deepretrieval)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--vllm", metavar="PATH", help="the vllm executable (default: scripts/setup-vllm.sh's venv)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="precision (default auto: bfloat16 where the CPU/GPU has bf16 units, else float32)")
    parser.add_argument("--max-model-len", type=int, default=2048, help="context length (default: 2048)")
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for health (default 900)")
    parser.add_argument("--vllm-args", default="", help='extra `vllm serve` arguments, e.g. "--max-num-seqs 64"')
    parser.add_argument("--hot-swap", action="store_true",
                        help="load --adapter as --name into the server already running at --host/--port, then exit")


def snippets(base_url: str, name: str, adapter: str, card=None) -> str:
    """The client code for this endpoint, for LlamaIndex and Haystack, searching the rewrite as the adapter's
    ``card`` (:class:`~deepretrieval_trainer.rewriting.card.AdapterCard`) says it was trained."""
    framing, weight = (card.framing, card.query_weight) if card is not None else ("replace", 1)
    card_arg = f', card="{adapter}"' if card is not None else ""
    if framing == "fuse":
        haystack = f"""    pipeline.add_component("rewriter", DeepRetrievalQueryRewriter(backend="openai", model="{name}",
                                                                  base_url="{base_url}"))
    # trained with framing fuse: the rewrite and the user's query are searched apart, and their scores summed
    pipeline.add_component("joiner", QueryFusionJoiner(query_weight={weight}))
    pipeline.connect("rewriter.query", "rewrite_retriever.query")  # the user's query goes to query_retriever
    pipeline.connect("query_retriever.documents", "joiner.query_documents")
    pipeline.connect("rewrite_retriever.documents", "joiner.rewrite_documents")"""
        imports = "DeepRetrievalQueryRewriter, QueryFusionJoiner"
    else:
        include = framing == "expand"
        haystack = f"""    pipeline.add_component("rewriter", DeepRetrievalQueryRewriter(backend="openai", model="{name}",
                                                                  base_url="{base_url}",
                                                                  include_original={include}, query_weight={weight}))
    pipeline.connect("rewriter.search_query", "retriever.query")"""
        imports = "DeepRetrievalQueryRewriter"
    return f'''LlamaIndex (mode {framing}, query_weight {weight}, as the adapter's card says it was trained):
    from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
    from llamaindex_deepretrieval import DeepRetrievalRetriever

    rewriter = OpenAIRewriter("{name}", base_url="{base_url}"{card_arg})
    retriever = DeepRetrievalRetriever(retriever, rewriter=rewriter)

Haystack:
    from haystack_deepretrieval import {imports}

{haystack}
'''


def run(args: argparse.Namespace) -> int:
    from ..rewriting.serve import ServeError

    try:
        return _run(args)
    except ServeError as exc:  # the server would not start or load: its log tail says why, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from ..rewriting.card import read_card
    from ..rewriting.serve import ServerConfig, VLLMServer, load_adapter, speed_note

    config = ServerConfig(
        adapters={args.name: args.adapter}, base=args.base, host=args.host, port=args.port, vllm=args.vllm,
        dtype=args.dtype, max_model_len=args.max_model_len, startup_timeout=args.startup_timeout,
        extra_args=args.vllm_args,
    )
    if args.hot_swap:
        load_adapter(config.base_url, args.name, config.adapters[args.name])
        print(f"loaded {config.adapters[args.name]} as model {args.name!r} on {config.base_url}")
        return 0
    card = read_card(config.adapters[args.name])
    trained = card.describe() if card else "no card: how it was trained is unknown, framing replace assumed"
    print(f"adapter: {config.adapters[args.name]} ({trained})", file=sys.stderr)
    server = VLLMServer(config)
    note = speed_note()
    if note:
        print(f"note: {note}", file=sys.stderr)
    # SIGTERM (e.g. from a supervisor) stops the server the same way as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"starting vLLM (log: {server.log_file}); on CPU this takes a minute or two...", file=sys.stderr)
    try:
        server.start()
        print(f"serving {config.adapters[args.name]} as model {args.name!r} at {server.base_url} "
              f"(ready after {server.startup_s:.0f} s)\n")
        print(snippets(server.base_url, args.name, str(config.adapters[args.name]), card))
        print(f"hot-swap a newer adapter: deepretrieval serve --hot-swap --adapter NEW_RUN_DIR --name {args.name} "
              f"--port {args.port}\nCtrl-C stops the server.", flush=True)
        while server.process.poll() is None:
            time.sleep(1.0)
        print(f"vllm serve exited with code {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping vLLM...", file=sys.stderr)
        return 0
    finally:
        server.stop()
