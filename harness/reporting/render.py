"""Rendering a report: a list of blocks (headings, paragraphs, tables, figures, code) written out as
markdown, or as one self-contained HTML file with the figures embedded as data URIs."""

from __future__ import annotations

import base64
import html
import re


class Doc:
    """Blocks (heading, paragraph, table, figure, code) rendered to markdown or to one HTML file."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.figures: dict[str, bytes] = {}

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, rows: list[list[str]]):
        self.blocks.append(("table", rows))

    def code(self, text: str, language: str = ""):
        self.blocks.append(("code", text, language))

    def figure(self, name: str, image: bytes | None, caption: str) -> bool:
        """A PNG figure (``figures/<name>``); nothing, and False, for no image."""
        if image is None:
            return False
        self.figures[name] = image
        self.blocks.append(("figure", name, caption))
        return True

    def map_text(self, fn) -> None:
        """Apply ``fn`` to every text of the document (headings, paragraphs, cells, code, captions), never to
        the figures' bytes: e.g. ``text.scrub_paths`` before writing."""
        mapped = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                mapped.append(("h", block[1], fn(block[2])))
            elif kind == "p":
                mapped.append(("p", fn(block[1])))
            elif kind == "table":
                mapped.append(("table", [[fn(str(c)) for c in row] for row in block[1]]))
            elif kind == "code":
                mapped.append(("code", fn(block[1]), block[2]))
            else:
                mapped.append(("figure", block[1], fn(block[2])))
        self.blocks = mapped

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append("#" * block[1] + " " + block[2])
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                out.append(markdown_table(block[1][0], block[1][1:]))
            elif kind == "code":
                out.append(f"```{block[2]}\n{block[1].rstrip()}\n```")
            else:
                out.append(f"![{block[2]}](figures/{block[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in block[1][0])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                               for row in block[1][1:])
                body.append(f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(block[1].rstrip())}</code></pre>")
            else:
                data = base64.b64encode(self.figures[block[1]]).decode()
                alt = html.escape(block[2], quote=True)
                body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(block[2])}</figcaption></figure>")
        return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
        "th{background:#f3f3f3}.scroll{overflow-x:auto}code{background:#f5f5f5;padding:0 3px}"
        "pre{background:#f5f5f5;padding:.8em;overflow-x:auto}img{max-width:100%}figcaption{color:#555;font-size:13px}")


def _inline(text: str) -> str:
    """Markdown's inline `code`, **bold** and [links](url) as HTML; everything else escaped."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part, quote=False)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', escaped)
        out.append(escaped)
    return "".join(out)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

