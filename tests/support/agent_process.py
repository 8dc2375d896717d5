"""A real NodeAgent process whose ping handler can be made slow or failing, for tests.

    python -m tests.support.agent_process --node-id n1 --namespace ns --amqp-url URL \
        --data-dir DIR [--delay 30] [--fail] [--runs-file FILE] [--train-delay 1]

Every other request type uses the agent's real handlers (training after ``--train-delay``
seconds, so that a test can watch rounds go by).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

import anyio

from broker_net.amqp import AmqpTransport
from broker_net.codes import ErrorCode
from broker_net.logs import configure_logging
from broker_net.messages import PingReply, PingRequest
from node_agent.agent import NodeAgent
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HANDLERS, Handler
from node_agent.settings import NodeSettings


def _ping_handler(delay: float, fail: bool, runs_file: Path | None):
    async def handle_ping(request: PingRequest, context: NodeContext) -> PingReply:
        if runs_file is not None:
            with runs_file.open("a") as runs:
                runs.write(request.request_id + "\n")
        await anyio.sleep(delay)
        if fail:
            raise HandlerError(ErrorCode.NODE_ERROR, "this node is set up to fail")
        return PingReply(
            request_id=request.request_id,
            researcher_id=request.researcher_id,
            node_id=context.node_id,
            node_name=context.node_name,
        )

    return handle_ping


def _slow_training(delay: float) -> Handler:
    train = HANDLERS["train_request"]

    async def handle_train(request: Any, context: NodeContext) -> Any:
        await anyio.sleep(delay)
        return await train(request, context)

    return handle_train


async def _main(args: argparse.Namespace) -> None:
    settings = NodeSettings(
        node_id=args.node_id,
        namespace=args.namespace,
        amqp_url=args.amqp_url,
        data_dir=args.data_dir,
        heartbeat_interval=args.heartbeat,
        security=args.security,
    )
    handlers = dict(HANDLERS)
    handlers["ping_request"] = _ping_handler(args.delay, args.fail, args.runs_file)
    if args.train_delay:
        handlers["train_request"] = _slow_training(args.train_delay)
    async with (
        AmqpTransport(settings.amqp_url, connection_name=f"node:{args.node_id}") as transport,
        NodeAgent(settings, transport, handlers=handlers, shutdown_grace=1) as agent,
    ):
        await agent.wait_ready()
        print("ready", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        agent.stop()
                        return

                group.start_soon(stop_on_signal)
                await agent.serve()
                group.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--runs-file", type=Path)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--train-delay", type=float, default=0.0, help="seconds before training")
    parser.add_argument("--security", action="store_true", help="authenticate messages")
    configure_logging("WARNING")
    anyio.run(_main, parser.parse_args())
