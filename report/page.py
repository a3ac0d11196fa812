"""The report's page, built once as a list of blocks (headings, paragraphs, lists, tables, figures) and rendered twice:
report.md, and report.html with its figures embedded."""

import base64
import html


def to_markdown(blocks: list[tuple]) -> str:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0]})\n\n*{args[1]}*")
        elif kind == "table":
            header, body = args
            out.append("\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)]
                                 + ["| " + " | ".join(map(cell, row)) + " |" for row in body]))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], folder) -> str:
    """The same page as one HTML file, the figures embedded so it can be mailed or attached as it is."""
    esc = html.escape
    code = lambda s: esc(s).replace("`", "")  # noqa: E731
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"]
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{esc(args[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(args[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in args[0]) + "</ul>")
        elif kind == "img":
            data = base64.b64encode((folder / args[0]).read_bytes()).decode()
            out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(args[1])}'>"
                       f"<figcaption>{esc(args[1])}</figcaption></figure>")
        elif kind == "table":
            header, body = args
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{code(str(c))}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
    return "\n".join(out + ["</body></html>"]) + "\n"
