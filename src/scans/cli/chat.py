"""``scans chat``: a streamed conversation on the server's path (the backend's ``chat_batch``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ScansError
from . import common
from .common import add_model_args, add_profile_arg
from .generate import direction

CHAT_HELP = "/reset clears the history, /off and /on turn steering off and on, /quit (or Ctrl-D) quits."


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    """``scans chat``."""
    chat = sub.add_parser(
        "chat",
        help="interactive conversation: each message is classified and answered with steering",
        description=f"A conversation; each answer is streamed. In the chat: {CHAT_HELP}",
    )
    add_model_args(chat)
    add_profile_arg(chat)
    chat.add_argument("--compare", action="store_true", help="also stream the unsteered answer")
    chat.add_argument(
        "--max-new-tokens", type=int, default=512, help="new tokens per answer at most (default 512)"
    )
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=None)


def cmd_chat(args: argparse.Namespace, stdin: Any = None) -> int:
    """A conversation: history kept, every turn classified on its latest user message (the
    server's path, the backend's ``chat_batch``), the answer streamed as it is generated."""
    from ..conversations import encode_conversations
    from ..decode import RowSettings

    if args.max_new_tokens < 1:
        raise ScansError(f"--max-new-tokens {args.max_new_tokens}; fix: pass 1 or more")
    scans = common.load_scans(args)
    stdin = stdin or sys.stdin
    history: list[dict[str, str]] = []
    steering = True
    context = scans.max_model_len
    print(f"scans chat: the conversation is kept; each message is classified and steered. {CHAT_HELP}")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def answer(messages: list[dict[str, str]], steer: bool) -> str | None:
        """Stream one answer to ``messages``; None when the conversation fills the context."""

        def show_verdict(verdicts: list[Any], signs: list[int]) -> None:
            v = verdicts[0]
            verdict = v.decision or ("harmful" if v.harmful else "benign")
            print(f"[verdict: {verdict} (score {v.score:+.4f}), steering: {direction(signs[0])}]", flush=True)

        encoded = encode_conversations(scans, [messages])
        room = context - len(encoded[0][0])
        if room < 1:
            print(
                f"[the conversation is {len(encoded[0][0])} tokens, the model's context {context}: "
                "/reset starts a new one]"
            )
            return None
        settings = RowSettings(min(args.max_new_tokens, room), args.temperature, args.top_p, args.seed)
        settings.on_text = write
        [result] = scans.chat_batch(
            encoded,
            [settings],
            steer_rows=[steer],
            labels=[messages[-1]["content"]],
            on_verdicts=show_verdict,
            conversations=[messages],
        )
        write("\n")
        return result.result.text

    while True:
        write("> ")
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            line = ""
        if not line:  # Ctrl-D (end of input)
            write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        command = text.lower()
        if command.startswith("/") and " " not in command:  # "/usr/bin ..." is a message
            if command in ("/quit", "/exit"):
                return 0
            if command == "/reset":
                history.clear()
                print("[history cleared]")
            elif command in ("/off", "/on"):
                steering = command == "/on"
                print(f"[steering {'on' if steering else 'off'}]")
            else:
                print(f"[unknown command {text}] {CHAT_HELP}")
            continue
        messages = [*history, {"role": "user", "content": text}]
        try:
            if args.compare:
                print("--- unsteered ---")
                answer(messages, steer=False)
                print("--- steered ---")
            reply = answer(messages, steer=steering)
        except KeyboardInterrupt:  # Ctrl-C stops this answer; the turn is dropped
            print("\n[answer interrupted; not kept in the history]")
            continue
        if reply is not None:
            history += [messages[-1], {"role": "assistant", "content": reply}]
