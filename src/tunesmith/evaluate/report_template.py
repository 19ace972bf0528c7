"""Jinja2 templates of ``report.html`` and ``report.md``.

Kept as Python strings (not ``.j2`` files) so they ship inside any wheel without package-data
configuration. The HTML page is self-contained: inline CSS, images as ``data:`` URIs, no
script, no network request.
"""

HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="tunesmith {{ version }}">
<title>{{ report.title }}</title>
<style>
 body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
        color: #1d232b; background: #f6f7f9; }
 header { background: #1d2b3a; color: #fff; padding: 18px 32px; }
 header h1 { margin: 0 0 4px; font-size: 22px; }
 header p { margin: 0; opacity: .8; }
 nav { padding: 8px 32px; background: #e8ecf1; font-size: 13px; }
 nav a { margin-right: 14px; color: #1d4f8a; text-decoration: none; }
 main { padding: 8px 32px 40px; max-width: 1200px; }
 section { background: #fff; border: 1px solid #dde2e8; border-radius: 6px; margin: 18px 0;
           padding: 8px 20px 16px; }
 h2 { font-size: 18px; border-bottom: 1px solid #e4e8ee; padding-bottom: 6px; }
 h3 { font-size: 15px; margin: 16px 0 6px; }
 table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
 th, td { border: 1px solid #dde2e8; padding: 4px 8px; text-align: left; vertical-align: top; }
 th { background: #f0f3f6; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 tr.flag td { background: #fdecea; }
 caption { caption-side: top; text-align: left; color: #555; padding: 4px 0; }
 img { max-width: 100%; height: auto; border: 1px solid #eee; }
 .note { color: #555; }
 .example { border: 1px solid #e4e8ee; border-radius: 4px; margin: 8px 0; padding: 6px 10px; }
 .example.flag { border-left: 4px solid #c62828; }
 .example h4 { margin: 2px 0 6px; font-size: 13px; color: #444; }
 .example dl { display: grid; grid-template-columns: 130px 1fr; margin: 0; gap: 2px 10px; }
 .example dt { color: #666; font-size: 12px; }
 .example dd { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 13px; }
 .verdict { padding: 6px 10px; margin: 4px 0; border-radius: 4px; font-size: 14px; }
 .verdict.pass { background: #e8f5e9; } .verdict.warn { background: #fff8e1; }
 .verdict.fail { background: #fdecea; } .verdict.info { background: #eef3f8; }
 .verdict b { text-transform: uppercase; margin-right: 8px; }
 footer { color: #777; font-size: 12px; padding: 0 32px 24px; }
</style>
</head>
<body>
<header><h1>{{ report.title }}</h1>
{% if report.subtitle %}<p>{{ report.subtitle }}</p>{% endif %}</header>
<nav>{% for s in report.sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
{% for s in report.sections %}
<section id="{{ s.id }}">
<h2>{{ s.title }}</h2>
{% for b in s.blocks %}
{% if b.kind == "text" %}<p class="{{ b.get('style', '') }}">{{ b.text }}</p>
{% elif b.kind == "heading" %}<h3>{{ b.text }}</h3>
{% elif b.kind == "table" %}
<table>{% if b.caption %}<caption>{{ b.caption }}</caption>{% endif %}
<thead><tr>{% for h in b.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in b.rows %}<tr{% if b.flags and b.flags[loop.index0] %} class="flag"{% endif %}>
{% for c in row %}<td{% if c is number %} class="num"{% endif %}>{{ c | cell }}</td>
{% endfor %}</tr>
{% endfor %}</tbody></table>
{% elif b.kind == "image" %}<figure>
<img src="data:image/png;base64,{{ b.png | b64 }}" alt="{{ b.alt }}">
{% if b.alt %}<figcaption class="note">{{ b.alt }}</figcaption>{% endif %}</figure>
{% elif b.kind == "examples" %}
{% for ex in b["items"] %}<div class="example{% if ex.flag %} flag{% endif %}">
<h4>{{ ex.title }}</h4><dl>
{% for k, v in ex.fields %}<dt>{{ k }}</dt><dd>{{ v | cell }}</dd>{% endfor %}</dl></div>
{% endfor %}
{% elif b.kind == "verdicts" %}
{% for v in b["items"] %}<div class="verdict {{ v.status }}"><b>{{ v.status }}</b>{{ v.text }}</div>
{% endfor %}
{% endif %}
{% endfor %}
</section>
{% endfor %}
</main>
<footer>Written by tunesmith {{ version }} on {{ created }}. Self-contained page: no scripts,
no network requests.</footer>
</body>
</html>
"""

MARKDOWN = r"""# {{ report.title }}

{% if report.subtitle %}
{{ report.subtitle }}

{% endif %}
{% for s in report.sections %}
## {{ s.title }}

{% for b in s.blocks %}
{% if b.kind == "text" %}
{{ b.text }}
{% elif b.kind == "heading" %}
### {{ b.text }}
{% elif b.kind == "table" %}
{{ md_table(b) }}
{% elif b.kind == "image" %}
![{{ b.alt }}]({{ b.file }})
{% elif b.kind == "examples" %}
{% for ex in b["items"] %}
- **{{ ex.title }}**{% if ex.flag %} ⚑{% endif %}

{% for k, v in ex.fields %}
  - {{ k }}: {{ v | cell | mdinline }}
{% endfor %}
{% endfor %}
{% elif b.kind == "verdicts" %}
{% for v in b["items"] %}
- **{{ v.status | upper }}** {{ v.text }}
{% endfor %}
{% endif %}

{% endfor %}
{% endfor %}
---
Written by tunesmith {{ version }} on {{ created }}.
"""
