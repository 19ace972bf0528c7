"""Interactive terminal chat that keeps the conversation and uses the chat template."""

from __future__ import annotations

from rich.console import Console

from tunesmith.inference.generate import GenerationSettings, generate
from tunesmith.models.load import load_for_inference


def chat_loop(model_name: str, system: str | None, max_new_tokens: int,
              temperature: float) -> None:
    console = Console()
    model, tok = load_for_inference(model_name)
    console.print(f"[bold]{model_name}[/] — type a message; empty line or /exit quits, "
                  "/reset clears the conversation.")
    history: list[dict[str, str]] = []
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature,
                                  system=system, batch_size=1)
    while True:
        try:
            text = console.input("[bold cyan]you> [/]")
        except EOFError:
            break
        text = text.strip()
        if not text or text == "/exit":
            break
        if text == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": text})
        reply = generate(model, tok, [list(history)], settings)[0]
        history.append({"role": "assistant", "content": reply})
        console.print(f"[bold green]model>[/] {reply}", highlight=False)
