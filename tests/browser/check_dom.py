#!/usr/bin/env python3
"""Check the admin page's DOM as dumped by headless Chromium after its script ran.

usage: check_dom.py DOM_FILE TOOL MIN_COUNT
Exits non-zero with a message naming the first failed check.
"""
import sys
from html.parser import HTMLParser


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack = []          # ids of the enclosing elements that have one
        self.tables = {}         # table id -> list of rows (list of cell texts)
        self.cell = None
        self.row = None
        self.table = None
        self.rects = 0
        self.chart_texts = []
        self.in_chart = 0
        self.in_chart_text = False
        self.meta = ''
        self.in_meta = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'table' and a.get('id'):
            self.table = a['id']
            self.tables[self.table] = []
        elif tag == 'tr' and self.table:
            self.row = []
        elif tag in ('td', 'th') and self.row is not None:
            self.cell = ''
        elif tag == 'svg' and a.get('id') == 'chart':
            self.in_chart = 1
        elif self.in_chart:
            if tag == 'rect':
                self.rects += 1
            elif tag == 'text':
                self.in_chart_text = True
                self.chart_texts.append('')
        elif tag == 'div' and a.get('id') == 'meta':
            self.in_meta = True

    def handle_endtag(self, tag):
        if tag in ('td', 'th') and self.cell is not None:
            self.row.append(self.cell.strip())
            self.cell = None
        elif tag == 'tr' and self.row is not None:
            self.tables[self.table].append(self.row)
            self.row = None
        elif tag == 'table':
            self.table = None
        elif tag == 'svg':
            self.in_chart = 0
        elif tag == 'text':
            self.in_chart_text = False
        elif tag == 'div':
            self.in_meta = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.in_chart_text:
            self.chart_texts[-1] += data
        if self.in_meta:
            self.meta += data


def fail(msg):
    print(f'DOM check FAILED: {msg}', file=sys.stderr)
    sys.exit(1)


def main():
    path, tool, min_count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = Page()
    with open(path, encoding='utf-8') as f:
        p.feed(f.read())

    if not p.meta.startswith('up '):
        fail(f'#meta should read "up N s · ..." once /stats was fetched, got {p.meta!r}')

    rows = p.tables.get('tbl')
    if not rows:
        fail('table#tbl is missing or empty (the page script did not fill it)')
    header = rows[0]
    want = ['kind', 'name', 'count', 'p50', 'p90', 'p95', 'p99', 'p99.9', 'max', 'own p50', 'own p99']
    if header != want:
        fail(f'table#tbl header is {header}, expected {want}')
    tool_rows = [r for r in rows[1:] if r[:2] == ['tool', tool]]
    if not tool_rows:
        fail(f'table#tbl has no row for tool {tool!r}; rows: {rows[1:]}')
    r = tool_rows[0]
    if len(r) != len(want):
        fail(f'tool row has {len(r)} cells, expected {len(want)}: {r}')
    for name, val in zip(want[2:], r[2:]):
        try:
            float(val)
        except ValueError:
            fail(f'tool {tool!r} column {name!r} is not numeric: {val!r} (row {r})')
    if int(r[2]) < min_count:
        fail(f'tool {tool!r} count is {r[2]}, expected >= {min_count}')
    p50, p99, mx = float(r[3]), float(r[6]), float(r[8])
    if not (0 < p50 <= p99 <= mx):
        fail(f'tool {tool!r} percentiles are not 0 < p50 <= p99 <= max: {r}')
    kinds = {row[0] for row in rows[1:]}
    for k in ('server', 'backend', 'method', 'tool'):
        if k not in kinds:
            fail(f'table#tbl has no {k!r} row; rows: {rows[1:]}')

    if p.rects < 2:
        fail(f'svg#chart has {p.rects} rect elements, expected bars')
    labels = [t for t in p.chart_texts if t.startswith(('tool ', 'backend '))]
    if f'tool {tool}' not in labels or not any(t.startswith('backend ') for t in labels):
        fail(f'svg#chart lacks a bar label for tool {tool!r} and a backend: {p.chart_texts}')

    ctr = dict((row[0], row[1]) for row in p.tables.get('ctr', [])[1:] if len(row) == 2)
    if int(ctr.get('requests', '0')) < min_count:
        fail(f'table#ctr requests counter is {ctr.get("requests")!r}, expected >= {min_count}')

    print(f'DOM ok: tool {tool} row {r}; {len(rows) - 1} table rows, '
          f'{p.rects} chart rects, labels {labels}, requests counter {ctr["requests"]}')


if __name__ == '__main__':
    main()
