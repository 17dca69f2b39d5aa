/* raystep run report: draws window.RS_DATA and the pair chunks. Every text from the run is set with
   textContent or createTextNode: nothing from the data is ever parsed as HTML. */
(function () {
  "use strict";
  var D = window.RS_DATA;
  var PI = window.RS_CHUNKS["pairs-index"];
  var SVGNS = "http://www.w3.org/2000/svg";
  var COLORS = ["#3b6fb6", "#d9822b", "#2e9e6b", "#c0392b", "#8e5cc2", "#7f8c8d", "#b8a31f"];

  // ---- small DOM helpers -----------------------------------------------------------------------
  function add(el, kids) {
    if (kids === null || kids === undefined || kids === false) return el;
    if (Array.isArray(kids)) { kids.forEach(function (k) { add(el, k); }); return el; }
    if (typeof kids === "string" || typeof kids === "number") el.appendChild(document.createTextNode(String(kids)));
    else el.appendChild(kids);
    return el;
  }
  function h(tag, attrs, kids) {
    var el = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    });
    return add(el, kids);
  }
  function s(tag, attrs, kids) {
    var el = document.createElementNS(SVGNS, tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    if (kids) (Array.isArray(kids) ? kids : [kids]).forEach(function (k) {
      if (k === null || k === undefined) return;
      el.appendChild(typeof k === "string" ? document.createTextNode(k) : k);
    });
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function num(x) { return x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US"); }
  function fix(x, d) { return x === null || x === undefined || isNaN(x) ? "–" : Number(x).toFixed(d); }
  function pct(x, d) { return x === null || x === undefined ? "–" : (100 * x).toFixed(d === undefined ? 1 : d) + "%"; }
  function brief(x) {
    if (x === null || x === undefined) return "–";
    if (typeof x === "number") return Number.isInteger(x) ? num(x) : String(Math.round(x * 10000) / 10000);
    if (typeof x === "object") return JSON.stringify(x);
    return String(x);
  }
  function section(title, kids, attrs) { return h("section", attrs || { class: "card" }, [h("h2", null, title), kids]); }
  function statCard(label, value, key) {
    return h("div", { class: "stat" }, [h("div", { class: "stat-value", "data-count": key || null }, value), h("div", { class: "stat-label" }, label)]);
  }
  function table(headers, rows, attrs) {
    return h("table", attrs || { class: "grid" }, [
      h("thead", null, h("tr", null, headers.map(function (x) { return h("th", null, x); }))),
      h("tbody", null, rows.map(function (r) { return h("tr", null, r.map(function (c) { return c instanceof Node ? h("td", null, c) : h("td", null, brief(c)); })); }))
    ]);
  }
  function note(text) { return h("p", { class: "muted" }, text); }

  // ---- chunk loading (script tags work from file://, fetch does not) ----------------------------
  function loadChunk(name) {
    return new Promise(function (resolve, reject) {
      if (window.RS_CHUNKS[name]) { resolve(window.RS_CHUNKS[name]); return; }
      if (window.RS_WAIT[name]) { window.RS_WAIT[name].push(resolve); return; }
      window.RS_WAIT[name] = [resolve];
      var tag = document.createElement("script");
      tag.src = D.data_dir + "/" + name + ".js";
      tag.onerror = function () { delete window.RS_WAIT[name]; reject(new Error("could not load " + tag.src)); };
      document.head.appendChild(tag);
    });
  }

  // ---- charts (inline SVG) ---------------------------------------------------------------------
  function ticks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
    var err = (hi - lo) / count / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
    return out;
  }
  function tickLabel(v) {
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(1);
    return String(Math.round(v * 1e6) / 1e6);
  }
  function legend(items) {
    return h("div", { class: "legend" }, items.map(function (it) {
      return h("span", null, [h("i", { style: "background:" + it.color }), it.name]);
    }));
  }
  function lineChart(o) {
    var W = o.width || 440, H = o.height || 220, L = 56, R = 12, T = 10, B = 38;
    var xs = [], ys = [];
    o.series.forEach(function (sr) { sr.x.forEach(function (x, i) { if (sr.y[i] !== null && sr.y[i] !== undefined) { xs.push(x); ys.push(sr.y[i]); } }); });
    var box = h("div", { class: "chart" }, [h("div", { class: "chart-title" }, o.title)]);
    if (!xs.length) return add(box, note("no values"));
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = o.ymin !== undefined ? o.ymin : Math.min.apply(null, ys), y1 = o.ymax !== undefined ? o.ymax : Math.max.apply(null, ys);
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    var pad = (y1 - y0) * 0.05; if (o.ymin === undefined) y0 -= pad; if (o.ymax === undefined) y1 += pad;
    if (x1 === x0) { x1 = x0 + 1; }
    function X(v) { return L + (v - x0) / (x1 - x0) * (W - L - R); }
    function Y(v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); }
    var g = s("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "svg-chart", role: "img" });
    ticks(y0, y1, 5).forEach(function (v) {
      g.appendChild(s("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "gridline" }));
      g.appendChild(s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick" }, tickLabel(v)));
    });
    ticks(x0, x1, 6).forEach(function (v) {
      g.appendChild(s("text", { x: X(v), y: H - B + 16, "text-anchor": "middle", class: "tick" }, tickLabel(v)));
    });
    g.appendChild(s("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    g.appendChild(s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    g.appendChild(s("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, o.xlabel || ""));
    g.appendChild(s("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label", transform: "rotate(-90 12 " + (T + H - B) / 2 + ")" }, o.ylabel || ""));
    o.series.forEach(function (sr, si) {
      var color = sr.color || COLORS[si % COLORS.length], d = "", pen = false, points = [];
      sr.x.forEach(function (x, i) {
        var y = sr.y[i];
        if (y === null || y === undefined || isNaN(y)) { pen = false; return; }
        d += (pen ? "L" : "M") + X(x).toFixed(1) + " " + Y(y).toFixed(1);
        pen = true; points.push([x, y]);
      });
      g.appendChild(s("path", { d: d, fill: "none", stroke: color, "stroke-width": 1.6, "stroke-dasharray": sr.dash || "none", class: "series", "data-points": points.length }));
      if (points.length <= 120) points.forEach(function (p) {
        g.appendChild(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.2, fill: color }, s("title", null, sr.name + " @ " + o.xlabel + " " + p[0] + ": " + tickLabel(p[1]))));
      });
    });
    if (o.series.length > 1) add(box, legend(o.series.map(function (sr, si) { return { name: sr.name, color: sr.color || COLORS[si % COLORS.length] }; })));
    return add(box, g);
  }
  function barChart(o) {
    // o.labels, o.groups: [{name, values, lo, hi, color}], o.ymax, o.yfmt
    var n = o.labels.length, G = o.groups.length;
    var W = Math.max(o.width || 420, 70 + n * Math.max(26, 16 * G + 10)), longest = 0;
    o.labels.forEach(function (l) { longest = Math.max(longest, String(l).length); });
    var rotate = o.rotate || longest * 6.2 > (W - 60) / n - 4;
    var H = (o.height || 230) + (rotate ? Math.min(90, longest * 4.5) : 0), L = 50 + (rotate ? Math.min(60, longest * 3) : 0), R = 10, T = 10, B = rotate ? 30 + Math.min(90, longest * 4.5) : 40;
    var box = h("div", { class: "chart" }, [h("div", { class: "chart-title" }, o.title)]);
    if (!n) return add(box, note("no values"));
    var ymax = o.ymax;
    if (ymax === undefined) {
      ymax = 0;
      o.groups.forEach(function (g) { g.values.forEach(function (v, i) { ymax = Math.max(ymax, g.hi ? g.hi[i] : v); }); });
      ymax = ymax > 0 ? ymax * 1.08 : 1;
    }
    function Y(v) { return T + (1 - v / ymax) * (H - T - B); }
    W += L - 50;
    var band = (W - L - R) / n, bw = Math.min(40, (band - 8) / G);
    var g = s("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "svg-chart", role: "img" });
    ticks(0, ymax, 5).forEach(function (v) {
      g.appendChild(s("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "gridline" }));
      g.appendChild(s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick" }, o.yfmt ? o.yfmt(v) : tickLabel(v)));
    });
    o.labels.forEach(function (label, i) {
      var cx = L + band * (i + 0.5);
      var t = s("text", { x: cx, y: H - B + 15, "text-anchor": rotate ? "end" : "middle", class: "tick" }, String(label));
      if (rotate) t.setAttribute("transform", "rotate(-35 " + cx + " " + (H - B + 15) + ")");
      g.appendChild(t);
      o.groups.forEach(function (grp, gi) {
        var v = grp.values[i];
        if (v === null || v === undefined) return;
        var x = cx - (G * bw) / 2 + gi * bw, color = grp.color || COLORS[gi % COLORS.length];
        var tip = (grp.name ? grp.name + ", " : "") + label + ": " + (o.yfmt ? o.yfmt(v) : brief(v)) +
          (grp.lo ? " (95% CI " + (o.yfmt ? o.yfmt(grp.lo[i]) : brief(grp.lo[i])) + "–" + (o.yfmt ? o.yfmt(grp.hi[i]) : brief(grp.hi[i])) + ")" : "") +
          (grp.n ? ", n = " + grp.n[i] : "");
        g.appendChild(s("rect", { x: x + 1, y: Y(v), width: Math.max(1, bw - 2), height: Math.max(0, Y(0) - Y(v)), fill: color, class: "bar" }, s("title", null, tip)));
        if (grp.lo) {
          var mx = x + bw / 2;
          g.appendChild(s("path", { d: "M" + mx + " " + Y(grp.lo[i]) + "V" + Y(grp.hi[i]) + "M" + (mx - 4) + " " + Y(grp.lo[i]) + "h8M" + (mx - 4) + " " + Y(grp.hi[i]) + "h8", stroke: "#222", "stroke-width": 1, fill: "none" }));
        }
      });
    });
    g.appendChild(s("line", { x1: L, x2: W - R, y1: Y(0), y2: Y(0), class: "axis" }));
    g.appendChild(s("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label", transform: "rotate(-90 12 " + (T + H - B) / 2 + ")" }, o.ylabel || ""));
    g.appendChild(s("text", { x: (L + W - R) / 2, y: H - 3, "text-anchor": "middle", class: "axis-label" }, o.xlabel || ""));
    if (G > 1) add(box, legend(o.groups.map(function (grp, gi) { return { name: grp.name, color: grp.color || COLORS[gi % COLORS.length] }; })));
    return add(box, g);
  }
  function accFmt(v) { return Math.round(100 * v) + "%"; }

  // ---- word diff for the two steps --------------------------------------------------------------
  function tokens(text) { return text.match(/\s+|[A-Za-z_]+|\d+(?:\.\d+)?|[^\sA-Za-z_\d]/g) || []; }
  function diff(a, b) {
    var A = tokens(a), B = tokens(b), pre = 0, suf = 0;
    while (pre < A.length && pre < B.length && A[pre] === B[pre]) pre++;
    while (suf < A.length - pre && suf < B.length - pre && A[A.length - 1 - suf] === B[B.length - 1 - suf]) suf++;
    var a2 = A.slice(pre, A.length - suf), b2 = B.slice(pre, B.length - suf), ops = [];
    if (a2.length * b2.length > 400000) {
      a2.forEach(function (t) { ops.push(["-", t]); }); b2.forEach(function (t) { ops.push(["+", t]); });
    } else {
      var n = a2.length, m = b2.length, L = [];
      for (var i = 0; i <= n; i++) L.push(new Int32Array(m + 1));
      for (i = n - 1; i >= 0; i--) for (var j = m - 1; j >= 0; j--)
        L[i][j] = a2[i] === b2[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
      i = 0; j = 0;
      while (i < n && j < m) {
        if (a2[i] === b2[j]) { ops.push(["=", a2[i]]); i++; j++; }
        else if (L[i + 1][j] >= L[i][j + 1]) { ops.push(["-", a2[i]]); i++; }
        else { ops.push(["+", b2[j]]); j++; }
      }
      for (; i < n; i++) ops.push(["-", a2[i]]);
      for (; j < m; j++) ops.push(["+", b2[j]]);
    }
    var head = A.slice(0, pre).map(function (t) { return ["=", t]; }), tail = A.slice(A.length - suf).map(function (t) { return ["=", t]; });
    return head.concat(ops, tail);
  }
  function diffView(ops, side) {
    var keep = side === "rejected" ? "-" : "+", tag = side === "rejected" ? "del" : "ins", el = h("div", { class: "step-text" }), run = "", runTag = null;
    function flush() {
      if (!run) return;
      add(el, runTag ? h(tag, { class: "d-" + tag }, run) : run);
      run = "";
    }
    ops.forEach(function (op) {
      if (op[0] !== "=" && op[0] !== keep) return;
      var marked = op[0] === keep;
      if (marked !== !!runTag) { flush(); runTag = marked ? tag : null; }
      run += op[1];
    });
    flush();
    return el;
  }

  // ---- header, tabs, warnings -----------------------------------------------------------------
  var TABS = [["overview", "Overview"], ["pairs", "Pairs"], ["collection", "Collection & localization"], ["training", "Training"], ["evaluation", "Evaluation"]];
  function header() {
    var r = D.run;
    add(clear(document.getElementById("top")), [
      h("h1", null, ["raystep run ", h("span", { class: "run-name" }, r.name)]),
      h("div", { class: "muted small" }, [r.path, " · created ", r.created_at || "–", " · updated ", r.updated_at || "–", " · report built ", r.built_at])
    ]);
    var nav = clear(document.getElementById("tabs"));
    TABS.forEach(function (t) { add(nav, h("a", { href: "#" + t[0], "data-tab": t[0], id: "tab-" + t[0] }, t[1])); });
    if (D.warnings && D.warnings.length) {
      var w = clear(document.getElementById("warnings"));
      add(w, h("details", { class: "warn" }, [
        h("summary", null, D.warnings.length + " thing(s) in this run folder could not be read or do not add up"),
        h("ul", null, D.warnings.map(function (x) { return h("li", null, x); }))
      ]));
    }
  }

  // ---- overview --------------------------------------------------------------------------------
  function overview() {
    var L = D.lineage, boxes = [
      ["problems", "problems", L.problems, null],
      ["samples", "samples", L.samples, num(L.wrong) + " wrong"],
      ["localized", "localized", L.localized, num(L.labelled) + " with a wrong step"],
      ["pairs", "pairs", L.pairs, "from " + num(L.pair_samples) + " samples" + (L.reference ? " · " + num(L.reference) + " scored" : "")],
      ["train_steps", "training steps", L.train_steps, L.model.exported ? "model/ exported" : "no model/ yet"]
    ];
    var flow = h("div", { class: "lineage" });
    boxes.forEach(function (b, i) {
      if (i) add(flow, h("div", { class: "arrow" }, "→"));
      add(flow, h("div", { class: "lin-box" + (b[2] ? "" : " empty") }, [
        h("div", { class: "lin-count", "data-count": b[0] }, num(b[2])), h("div", { class: "lin-label" }, b[1]), b[3] ? h("div", { class: "lin-sub" }, b[3]) : null
      ]));
    });
    add(flow, h("div", { class: "arrow" }, "→"));
    add(flow, h("div", { class: "lin-box" + (L.evals.length ? "" : " empty") }, [
      h("div", { class: "lin-count", "data-count": "evals" }, num(L.evals.length)), h("div", { class: "lin-label" }, "evaluations"),
      h("div", { class: "lin-sub" }, L.evals.map(function (e) { return h("div", null, e.name + " / " + e.benchmark + ": " + pct(e.accuracy)); }))
    ]));
    var stageRows = D.stages.map(function (st) {
      var fields = h("div", { class: "chips" });
      Object.keys(st.fields).forEach(function (k) {
        var v = st.fields[k];
        add(fields, h("span", { class: "chip", "data-stage": st.name, "data-field": k }, [h("b", null, k), " ", brief(v)]));
      });
      return h("tr", { "data-stage": st.name }, [
        h("td", null, h("b", null, st.name)),
        h("td", null, h("span", { class: "status status-" + st.status }, st.status || "–")),
        h("td", null, st.started_at || "–"),
        h("td", { class: "num" }, st.seconds === null || st.seconds === undefined ? "–" : fix(st.seconds, 1) + " s"),
        h("td", null, [st.error ? h("div", { class: "error-text" }, st.error) : null, fields])
      ]);
    });
    var versions = D.versions ? table(["library", "version"], Object.keys(D.versions).map(function (k) { return [k, D.versions[k]]; })) : note("no versions recorded");
    return [
      section("Lineage", flow),
      section("Stages", D.stages.length ? h("table", { class: "grid stages" }, [
        h("thead", null, h("tr", null, ["stage", "status", "started", "time", "counts"].map(function (x) { return h("th", null, x); }))),
        h("tbody", null, stageRows)]) : note("the manifest records no stage yet")),
      h("div", { class: "two" }, [
        section("Versions", versions),
        section("Config", D.config ? h("details", null, [h("summary", null, "resolved run config (manifest.json)"), h("pre", { class: "code" }, JSON.stringify(D.config, null, 2))]) : note("no config recorded"))
      ])
    ];
  }

  // ---- pairs -----------------------------------------------------------------------------------
  var P = { filters: {}, sort: null, page: 0, size: 50, rows: null, selected: -1 };
  var MARKS = window.RS_REPORT = { pairs: P };
  function startTimer() { MARKS.t0 = performance.now(); }
  var FILTERS = [
    ["ds", "dataset"], ["lvl", "level"], ["subj", "subject"], ["loc", "localizer"]
  ];
  function codeOptions(key) {
    var values = PI.dicts[key], counts = new Int32Array(values.length), col = PI.cols[key];
    for (var i = 0; i < PI.n; i++) if (col[i] >= 0) counts[col[i]]++;
    var order = key === "lvl" ? PI.level_order : values.map(function (_, i) { return i; });
    return order.map(function (c) { return [c, values[c] + " (" + num(counts[c]) + ")"]; });
  }
  function kOptions() {
    var counts = {};
    PI.cols.k.forEach(function (k) { counts[k] = (counts[k] || 0) + 1; });
    return Object.keys(counts).map(Number).sort(function (a, b) { return a - b; }).map(function (k) { return [k, "step " + k + " (" + num(counts[k]) + ")"]; });
  }
  function readFilters(form) {
    var f = {};
    form.querySelectorAll("[data-filter]").forEach(function (el) {
      var v = el.value;
      if (v === "" || v === "any") return;
      f[el.getAttribute("data-filter")] = Number(v);
    });
    return f;
  }
  function applyFilters() {
    var t0 = performance.now(), f = P.filters, c = PI.cols, n = PI.n, out = new Int32Array(n), m = 0;
    var rate = f.rate_min !== undefined || f.rate_max !== undefined, rmin = f.rate_min === undefined ? -1 : f.rate_min * 1000, rmax = f.rate_max === undefined ? 1e9 : f.rate_max * 1000;
    var pmin = f.plen_min === undefined ? -1 : f.plen_min, pmax = f.plen_max === undefined ? 1e15 : f.plen_max;
    var smin = f.slen_min === undefined ? -1 : f.slen_min, smax = f.slen_max === undefined ? 1e15 : f.slen_max;
    for (var i = 0; i < n; i++) {
      if (f.ds !== undefined && c.ds[i] !== f.ds) continue;
      if (f.lvl !== undefined && c.lvl[i] !== f.lvl) continue;
      if (f.subj !== undefined && c.subj[i] !== f.subj) continue;
      if (f.loc !== undefined && c.loc[i] !== f.loc) continue;
      if (f.k !== undefined && c.k[i] !== f.k) continue;
      if (f.agree !== undefined && c.agree[i] !== f.agree) continue;
      if (f.ref !== undefined && (c.margin[i] === null) === (f.ref === 1)) continue;
      if (rate && (c.rate[i] < 0 || c.rate[i] < rmin || c.rate[i] > rmax)) continue;
      if (c.plen[i] < pmin || c.plen[i] > pmax) continue;
      var sl = Math.max(c.rlen[i], c.clen[i]);
      if (sl < smin || sl > smax) continue;
      out[m++] = i;
    }
    var rows = out.slice(0, m);
    if (P.sort) {
      var col = c[P.sort.col], dir = P.sort.dir;
      rows.sort(function (a, b) {
        var x = col[a], y = col[b];
        if (x === y) return a - b;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : 1) * dir;
      });
    }
    P.rows = rows;
    P.filterMs = performance.now() - t0;
  }
  var COLS = [
    ["#", null], ["pair", null], ["dataset", "ds"], ["level", "lvl"], ["subject", "subj"], ["k", "k"], ["localizer", "loc"],
    ["agree", "agree"], ["rectify rate", "rate"], ["prompt chars", "plen"], ["rejected chars", "rlen"], ["chosen chars", "clen"], ["ref margin", "margin"], ["rejected → chosen (step k)", null]
  ];
  function activeCols() {
    return COLS.filter(function (c) {
      if (c[1] === "margin") return PI.has_reference;
      if (c[1] === "lvl" || c[1] === "subj" || c[1] === "ds") return PI.dicts[c[1]].length > 0;
      return true;
    });
  }
  function dictVal(key, i) { var v = PI.cols[key][i]; return v < 0 ? "–" : PI.dicts[key][v]; }
  function agreeText(v) { return v === 1 ? "yes" : v === 2 ? "no" : "–"; }
  function cellFor(key, i) {
    var c = PI.cols;
    switch (key) {
      case "ds": case "lvl": case "subj": case "loc": return dictVal(key, i);
      case "agree": return agreeText(c.agree[i]);
      case "rate": return c.rate[i] < 0 ? "–" : pct(c.rate[i] / 1000, 0);
      case "margin": return c.margin[i] === null ? "–" : fix(c.margin[i], 2);
      default: return num(c[key][i]);
    }
  }
  function pairsView() {
    if (!PI || !PI.n) return [section("Pairs", note("No pairs yet: the rectify stage writes pairs/ (or bring a pairs.jsonl)."))];
    var form = h("form", { class: "filters", id: "pair-filters", onsubmit: function (e) { e.preventDefault(); } });
    function select(key, label, options) {
      return h("label", null, [label, h("select", { "data-filter": key, id: "filter-" + key },
        [h("option", { value: "any" }, "any")].concat(options.map(function (o) { return h("option", { value: o[0] }, o[1]); })))]);
    }
    function range(key, label, step, placeholderMax) {
      return h("label", null, [label, h("span", { class: "range" }, [
        h("input", { type: "number", min: 0, step: step, "data-filter": key + "_min", id: "filter-" + key + "-min", placeholder: "min" }),
        "–",
        h("input", { type: "number", min: 0, step: step, "data-filter": key + "_max", id: "filter-" + key + "-max", placeholder: placeholderMax || "max" })])]);
    }
    FILTERS.forEach(function (f) { if (PI.dicts[f[0]].length) add(form, select(f[0], f[1], codeOptions(f[0]))); });
    add(form, select("k", "first wrong step k", kOptions()));
    add(form, select("agree", "localizers agree", [[1, "yes"], [2, "no"], [0, "one method"]]));
    if (PI.has_reference) add(form, select("ref", "reference", [[1, "scored"], [0, "not scored"]]));
    add(form, range("rate", "rectify success rate", 0.05, "1"));
    add(form, range("plen", "prompt + prefix chars", 50));
    add(form, range("slen", "step chars (longer)", 10));
    add(form, h("button", { type: "button", id: "filter-reset", onclick: function () { form.reset(); onFilter(); } }, "reset"));
    form.addEventListener("input", onFilter);
    form.addEventListener("change", onFilter);
    var counter = h("div", { class: "counter" }, [
      h("span", { id: "pairs-matching" }, ""), " matching of ", h("span", { id: "pairs-total" }, num(PI.n)), " pairs",
      h("span", { class: "muted small", id: "filter-time" }, "")
    ]);
    var size = h("select", { id: "page-size", onchange: function () { startTimer(); P.size = Number(size.value); P.page = 0; renderTable(); } },
      [25, 50, 100, 250, 1000].map(function (v) { return h("option", { value: v, selected: v === P.size }, v + " per page"); }));
    var pager = h("div", { class: "pager", id: "pager" });
    var tbl = h("table", { class: "grid pairs", id: "pairs-table" }, [
      h("thead", null, h("tr", null, activeCols().map(function (c) {
        var th = h("th", { "data-col": c[1] || "" }, c[0]);
        if (c[1]) th.addEventListener("click", function () {
          startTimer();
          P.sort = P.sort && P.sort.col === c[1] ? (P.sort.dir === 1 ? { col: c[1], dir: -1 } : null) : { col: c[1], dir: 1 };
          applyFilters(); P.page = 0; renderTable();
        });
        return th;
      }))),
      h("tbody", { id: "pairs-body" })
    ]);
    var detail = h("div", { id: "pair-detail" });
    return [section("Pairs", [form, h("div", { class: "toolbar" }, [counter, h("div", { class: "spacer" }), size, pager]), h("div", { class: "table-wrap" }, tbl)], { class: "card", id: "pairs-section" }), detail];
  }
  function onFilter() {
    var form = document.getElementById("pair-filters");
    if (!form) return;
    startTimer();
    P.filters = readFilters(form);
    applyFilters();
    P.page = 0;
    renderTable();
  }
  function renderTable() {
    var body = document.getElementById("pairs-body");
    if (!body || !P.rows) return;
    var t0 = performance.now(), rows = P.rows, pages = Math.max(1, Math.ceil(rows.length / P.size));
    P.page = Math.min(P.page, pages - 1);
    var first = P.page * P.size, last = Math.min(rows.length, first + P.size), cols = activeCols();
    document.getElementById("pairs-matching").textContent = num(rows.length);
    document.getElementById("pairs-matching").setAttribute("data-value", rows.length);
    clear(body);
    var need = {};
    for (var r = first; r < last; r++) {
      var i = rows[r], tr = h("tr", { class: "pair-row" + (i === P.selected ? " selected" : ""), "data-index": i });
      cols.forEach(function (c) {
        if (c[0] === "#") add(tr, h("td", { class: "num muted" }, num(i + 1)));
        else if (c[0] === "pair") add(tr, h("td", { class: "pair-id loading", "data-preview": "id" }, "…"));
        else if (!c[1]) add(tr, h("td", { class: "preview loading", "data-preview": "steps" }, "…"));
        else add(tr, h("td", { "data-col": c[1], class: c[1] === "lvl" || c[1] === "subj" || c[1] === "ds" || c[1] === "loc" || c[1] === "agree" ? "" : "num" }, cellFor(c[1], i)));
      });
      tr.addEventListener("click", (function (idx) { return function () { selectPair(idx); }; })(i));
      body.appendChild(tr);
      need[Math.floor(i / PI.preview_chunk)] = true;
    }
    if (first === last) add(body, h("tr", null, h("td", { colspan: cols.length, class: "muted" }, "no pair matches these filters")));
    renderPager(pages);
    P.renderMs = performance.now() - t0;
    document.getElementById("filter-time").textContent = " · filtered in " + fix(P.filterMs || 0, 1) + " ms, drawn in " + fix(P.renderMs, 1) + " ms";
    var names = Object.keys(need), pending = names.length;
    body.setAttribute("data-previews", pending ? "loading" : "done");
    if (!pending) {
      if (MARKS.previewsMs === undefined) MARKS.previewsMs = performance.now();
      MARKS.lastMs = performance.now() - MARKS.t0;
    }
    names.forEach(function (c) {
      var name = "pv-" + ("0000" + c).slice(-5);
      loadChunk(name).then(function (chunk) {
        body.querySelectorAll("tr.pair-row").forEach(function (tr) {
          var i = Number(tr.getAttribute("data-index"));
          if (Math.floor(i / PI.preview_chunk) !== Number(c)) return;
          var p = chunk[i % PI.preview_chunk];
          var idCell = tr.querySelector('[data-preview="id"]'), stepCell = tr.querySelector('[data-preview="steps"]');
          idCell.textContent = p[0]; idCell.classList.remove("loading");
          clear(stepCell).classList.remove("loading");
          add(stepCell, [h("div", { class: "pv-rej", title: "rejected" }, p[1]), h("div", { class: "pv-cho", title: "chosen" }, p[2])]);
        });
      }).catch(function (err) { body.setAttribute("data-error", String(err)); }).then(function () {
        if (--pending === 0 && body.isConnected) {
          body.setAttribute("data-previews", "done");
          if (MARKS.previewsMs === undefined) MARKS.previewsMs = performance.now();
          MARKS.lastMs = performance.now() - MARKS.t0;
        }
      });
    });
  }
  function renderPager(pages) {
    var pager = clear(document.getElementById("pager"));
    function go(p) { return function () { startTimer(); P.page = Math.max(0, Math.min(pages - 1, p)); renderTable(); }; }
    add(pager, [
      h("button", { type: "button", onclick: go(0), disabled: P.page === 0 }, "«"),
      h("button", { type: "button", id: "page-prev", onclick: go(P.page - 1), disabled: P.page === 0 }, "‹"),
      h("span", { id: "page-label" }, "page " + num(P.page + 1) + " of " + num(pages)),
      h("button", { type: "button", id: "page-next", onclick: go(P.page + 1), disabled: P.page >= pages - 1 }, "›"),
      h("button", { type: "button", onclick: go(pages - 1), disabled: P.page >= pages - 1 }, "»")
    ]);
  }
  function selectPair(i) {
    startTimer();
    P.selected = i;
    history.replaceState(null, "", "#pairs/" + i);
    document.querySelectorAll("tr.pair-row").forEach(function (tr) { tr.classList.toggle("selected", Number(tr.getAttribute("data-index")) === i); });
    openPair(i).then(function () {
      MARKS.openMs = performance.now() - MARKS.t0;
      var el = document.getElementById("pair-detail");
      if (el && el.scrollIntoView) el.scrollIntoView({ block: "start" });
    });
  }
  function sideBox(label, cls, content) { return h("div", { class: "side " + cls }, [h("div", { class: "side-label" }, label), content]); }
  function verdictText(v) {
    if (v.error) return "error: " + v.error;
    return Number(v.k) > 0 ? "step " + v.k + " is the first wrong step" : "found no wrong step";
  }
  function verdictsView(verdicts, k) {
    if (!verdicts.length) return note("no localizer record for this sample (localized/ has no row for it)");
    return h("div", { class: "verdicts" }, verdicts.map(function (v) {
      var agrees = !v.error && Number(v.k) === k;
      var parts = [h("div", { class: "verdict-head" }, [h("b", null, v.method), v.model ? h("span", { class: "muted" }, " (" + v.model + ")") : null, ": ",
        h("span", { class: "verdict " + (v.error ? "bad" : agrees ? "good" : "other"), "data-method": v.method }, verdictText(v))])];
      if (v.labels) parts.push(h("div", { class: "chips" }, Object.keys(v.labels).map(function (step) {
        var lab = String(v.labels[step]);
        return h("span", { class: "chip label-" + lab.toLowerCase() }, "step " + step + ": " + lab);
      })));
      if (v.probes) parts.push(h("div", { class: "chips" }, v.probes.map(function (p) {
        return h("span", { class: "chip " + (p.alive ? "label-correct" : "label-incorrect") }, "after step " + p.step + ": " + pct(p.rate, 0) + " of " + p.n + " rollouts reach the answer");
      })));
      if (v.reply !== undefined) parts.push(h("details", { open: true, class: "reply" }, [h("summary", null, "judge's reply"), h("pre", { class: "text judge-reply" }, v.reply)]));
      return h("div", { class: "verdict-box" }, parts);
    }));
  }
  function openPair(i) {
    var el = document.getElementById("pair-detail");
    if (!el) return Promise.resolve();
    clear(el); add(el, h("section", { class: "card" }, note("loading pair " + (i + 1) + " …")));
    var name = "pd-" + ("0000" + Math.floor(i / PI.detail_chunk)).slice(-5);
    return loadChunk(name).then(function (chunk) {
      if (P.selected !== i && P.selected >= 0) return;
      var r = chunk.r[i % PI.detail_chunk], S = chunk.s;
      function t(j) { return j === null || j === undefined || j < 0 ? null : S[j]; }
      var k = PI.cols.k[i], rejected = t(r[3]) || "", chosen = t(r[4]) || "", prefix = t(r[2]) || "";
      var fullRejected = r[15] & 1 ? rejected + (t(r[5]) || "") : t(r[5]), fullChosen = r[15] & 2 ? chosen + (t(r[6]) || "") : t(r[6]);
      var verdicts = t(r[10]) ? JSON.parse(t(r[10])) : [];
      var ops = diff(rejected, chosen);
      var meta = h("div", { class: "chips" }, [
        ["pair", r[0]], ["problem", t(r[8])], ["sample", t(r[9])], ["dataset", dictVal("ds", i)], ["level", dictVal("lvl", i)], ["subject", dictVal("subj", i)],
        ["k", k], ["localizer", dictVal("loc", i)], ["rectify success", PI.cols.rate[i] < 0 ? "–" : pct(PI.cols.rate[i] / 1000, 0)],
        ["chosen success", PI.cols.crate[i] < 0 ? "–" : pct(PI.cols.crate[i] / 1000, 0)], ["gold answer", t(r[7])], ["policy", t(r[13])]
      ].filter(function (x) { return x[1] !== null && x[1] !== "–"; }).map(function (x) { return h("span", { class: "chip" }, [h("b", null, x[0]), " ", String(x[1])]); }));
      var ref = r[11] === null || r[11] === undefined ? note("Reference log-probs: not scored yet (training writes train/reference.parquet before its first update).") :
        h("div", { class: "chips reference" }, [
          h("span", { class: "chip" }, [h("b", null, "ref log p(chosen)"), " " + fix(r[11], 3)]),
          h("span", { class: "chip" }, [h("b", null, "ref log p(rejected)"), " " + fix(r[12], 3)]),
          h("span", { class: "chip", id: "ref-margin" }, [h("b", null, "margin"), " " + fix(r[11] - r[12], 3)])
        ]);
      var nav = h("div", { class: "pair-nav" }, [
        h("button", { type: "button", id: "pair-prev", onclick: function () { step(-1); } }, "‹ previous"),
        h("button", { type: "button", id: "pair-next", onclick: function () { step(1); } }, "next ›")
      ]);
      function step(d) {
        var pos = Array.prototype.indexOf.call(P.rows, i), nxt = P.rows[pos + d];
        if (nxt !== undefined) { P.page = Math.floor((pos + d) / P.size); renderTable(); selectPair(nxt); }
      }
      clear(el);
      add(el, h("section", { class: "card pair", "data-index": i }, [
        h("div", { class: "pair-title" }, [h("h2", null, "Pair " + num(i + 1) + " · step " + k), nav]), meta,
        h("h3", null, "Question"), h("div", { class: "text question" }, t(r[1]) || ""),
        h("details", { class: "prefix" }, [h("summary", null, k > 1 ? "Correct prefix: step" + (k > 2 ? "s 1–" + (k - 1) : " 1") + " (" + num(prefix.length) + " chars)" : "Prefix: none before step 1 (" + num(prefix.length) + " chars)"), h("pre", { class: "text" }, prefix)]),
        h("h3", null, "Step " + k + ": rejected and chosen"),
        h("div", { class: "sides" }, [
          sideBox("rejected (the policy's step " + k + ")", "side-rejected", diffView(ops, "rejected")),
          sideBox("chosen (a rectified step " + k + ")", "side-chosen", diffView(ops, "chosen"))
        ]),
        h("details", { class: "rest" }, [h("summary", null, "the rest of each solution after the prefix"), h("div", { class: "sides" }, [
          sideBox("full rejected", "side-rejected", h("pre", { class: "text full-rejected" }, fullRejected || "–")),
          sideBox("full chosen", "side-chosen", h("pre", { class: "text full-chosen" }, fullChosen || "–"))])]),
        h("h3", null, "Localizers"), verdictsView(verdicts, k),
        h("h3", null, "Reference"), ref,
        t(r[14]) ? h("details", null, [h("summary", null, "sampling"), h("pre", { class: "code" }, t(r[14]))]) : null
      ]));
    }).catch(function (err) { clear(el); add(el, h("section", { class: "card" }, h("p", { class: "error-text" }, String(err)))); });
  }

  // ---- collection and localization --------------------------------------------------------------
  function groupBars(title, groups) {
    var names = Object.keys(groups || {});
    if (names.length < 2) return null;
    return h("div", null, [barChart({ title: title, labels: names, groups: [{ values: names.map(function (n) { return groups[n].accuracy; }), n: names.map(function (n) { return groups[n].samples; }) }], ymax: 1, yfmt: accFmt, ylabel: "sample accuracy", rotate: names.length > 8 })]);
  }
  function collectionView() {
    var C = D.collection, out = [];
    out.push(section("Collection", [
      h("div", { class: "stats" }, [statCard("problems", num(C.problems), "c-problems"), statCard("samples", num(C.samples), "c-samples"),
        statCard("correct", C.samples ? pct(C.correct / C.samples) : "–", "c-accuracy"), statCard("wrong samples localized", num(C.localized), "c-localized"), statCard("rows kept with errors", num(C.errors_total), "c-errors")]),
      h("div", { class: "charts" }, [
        barChart({ title: "Accuracy per problem (fraction of its samples correct)", labels: Object.keys(C.accuracy_hist).map(function (x) { return pct(Number(x), 0); }), groups: [{ values: Object.values(C.accuracy_hist) }], ylabel: "problems", xlabel: "per-problem accuracy" }),
        groupBars("Accuracy by level", C.by_level), groupBars("Accuracy by subject", C.by_subject), groupBars("Accuracy by dataset", C.by_dataset)
      ]),
      h("div", { class: "two" }, [
        table(["grade status", "samples"], Object.keys(C.grade_status).map(function (k) { return [k, C.grade_status[k]]; })),
        table(["finish reason", "samples"], Object.keys(C.finish_reason).map(function (k) { return [k, C.finish_reason[k]]; }))
      ])
    ]));
    var methods = Object.keys(C.first_wrong), ks = {};
    methods.forEach(function (m) { Object.keys(C.first_wrong[m]).forEach(function (k) { ks[k] = true; }); });
    var klabels = Object.keys(ks).map(Number).sort(function (a, b) { return a - b; });
    out.push(section("Localization", C.localized ? [
      h("div", { class: "charts" }, [barChart({
        title: "Where first errors fall (0 = no wrong step found)", labels: klabels.map(String), xlabel: "first wrong step", ylabel: "wrong samples",
        groups: methods.map(function (m) { return { name: m, values: klabels.map(function (k) { return C.first_wrong[m][k] || 0; }) }; })
      })]),
      h("h3", null, "Outcome per method"),
      table(["method", "labelled", "no wrong step", "errors"], Object.keys(C.outcomes).map(function (m) { var o = C.outcomes[m]; return [m, o.labelled || 0, o.no_wrong_step || 0, o.errors || 0]; })),
      h("h3", null, "Agreement between localizers"),
      C.agreement.length ? table(["method A", "method B", "samples both answered", "same step", "agreement"], C.agreement.map(function (a) { return [a.a, a.b, a.n, a.agree, pct(a.rate)]; }), { class: "grid", id: "agreement" })
        : note("one localizer only: nothing to compare"),
      C.all_agree ? note("All methods agree on " + num(C.all_agree.all_agree) + " of " + num(C.all_agree.rows_all_answered) + " samples every method answered (" + pct(C.all_agree.rate) + ").") : null
    ] : note("No localized rows yet.")));
    if (C.rectify) {
      var R = C.rectify, funnel = [["localized", R.localized], ["rectified", R.units], ["continuations", R.continuations], ["correct", R.continuations_correct], ["pairs", R.pairs]];
      out.push(section("Rectification", [
        barChart({ title: "From localized samples to pairs (rectified: samples with a wrong step; correct: continuations that reach the answer)", width: 560, labels: funnel.map(function (f) { return f[0]; }), groups: [{ values: funnel.map(function (f) { return f[1] === undefined ? null : f[1]; }) }], ylabel: "rows" }),
        R.skipped ? h("div", null, [h("b", null, "not rectified: "), brief(R.skipped)]) : null,
        R.this_run ? h("div", null, [h("b", null, "last run's choices: "), brief(R.this_run)]) : null
      ]));
    }
    var rejectNames = Object.keys(C.rejects || {});
    out.push(section("Rows kept with errors", [
      rejectNames.length ? table(["stage", "rejected input rows", "reasons"], rejectNames.map(function (n) { return [n, C.rejects[n].count, C.rejects[n].reasons]; })) : null,
      C.errors.length ? errorList(C.errors, C.errors_total) : note("No sample or localized row carries an error.")
    ]));
    return out;
  }
  function errorList(rows, total) {
    var shown = 100, wrap = h("div");
    function draw() {
      clear(wrap);
      add(wrap, table(["stage", "id", "localizer", "error"], rows.slice(0, shown).map(function (e) { return [e.stage, e.id, e.localizer || "–", h("span", { class: "error-text" }, e.error)]; }), { class: "grid", id: "error-rows" }));
      if (total > shown) add(wrap, h("p", { class: "muted" }, [
        "showing " + num(Math.min(shown, rows.length)) + " of " + num(total) + " ",
        shown < rows.length ? h("button", { type: "button", onclick: function () { shown += 200; draw(); } }, "show more") : "(the rest are in the shards)"
      ]));
    }
    draw();
    return wrap;
  }

  // ---- training --------------------------------------------------------------------------------
  function trainingView() {
    var T = D.training, c = T.columns;
    if (!c.step || !c.step.length) return [section("Training", [note("No training steps logged yet (train/metrics.jsonl)."), T.stats ? h("pre", { class: "code" }, JSON.stringify(T.stats, null, 2)) : null])];
    function line(title, keys, ylabel, extra) {
      var series = keys.filter(function (k) { return c[k]; }).map(function (k, i) { return { name: k, x: c.step, y: c[k], color: COLORS[i % COLORS.length] }; });
      return series.length ? lineChart(Object.assign({ title: title, series: series, xlabel: "optimizer step", ylabel: ylabel }, extra || {})) : null;
    }
    var S = T.stats || {};
    return [
      section("Training", [
        h("div", { class: "stats" }, [statCard("optimizer steps", num(c.step[c.step.length - 1]), "t-steps"), statCard("pairs", num(S.pairs), "t-pairs"),
          statCard("loss", fix(c.loss[0], 3) + " → " + fix(c.loss[c.loss.length - 1], 3)), statCard("reward accuracy (last)", c["rewards/accuracy"] ? pct(c["rewards/accuracy"][c.step.length - 1]) : "–"),
          statCard("status", S.status || "–")]),
        h("div", { class: "charts", id: "train-charts" }, [
          line("Step-DPO loss", ["loss"], "loss"),
          line("Rewards and margin (β · log-ratio)", ["rewards/margin", "rewards/chosen", "rewards/rejected"], "reward"),
          line("Reward accuracy", ["rewards/accuracy"], "fraction of pairs", { ymin: 0, ymax: 1 }),
          line("Learning rate", ["lr"], "lr"),
          line("Throughput", ["tokens_per_s"], "tokens / s"),
          c.mfu && c.mfu.some(function (v) { return v !== null; }) ? line("MFU", ["mfu"], "fraction of peak") : null
        ])
      ]),
      section("Events", T.events.length ? table(["event", "step", "total steps", "time"], T.events.map(function (e) { return [e.event, e.step, e.total_steps === undefined ? "–" : e.total_steps, e.time ? new Date(e.time * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"]; })) : note("no events")),
      T.stats ? section("Stage record", h("details", null, [h("summary", null, "manifest stages.train"), h("pre", { class: "code" }, JSON.stringify(T.stats, null, 2))])) : null
    ];
  }

  // ---- evaluation ------------------------------------------------------------------------------
  function ciText(ci) { return ci ? pct(ci[0]) + "–" + pct(ci[1]) : "–"; }
  function bucketChart(title, buckets, xlabel) {
    var names = Object.keys(buckets || {});
    if (!names.length) return null;
    return barChart({ title: title, labels: names, xlabel: xlabel, ylabel: "accuracy (95% CI)", ymax: 1, yfmt: accFmt, rotate: names.length > 6,
      groups: [{ values: names.map(function (n) { return buckets[n].accuracy; }), lo: names.map(function (n) { return buckets[n].ci95[0]; }), hi: names.map(function (n) { return buckets[n].ci95[1]; }), n: names.map(function (n) { return buckets[n].n; }) }] });
  }
  function answerBox(label, cls, ans, gold) {
    return h("div", { class: "side " + cls }, [
      h("div", { class: "side-label" }, [label + ": ", h("span", { class: "verdict " + (ans.correct ? "good" : "bad") }, ans.correct ? "right" : "wrong"), " · answer " + (ans.pred === null || ans.pred === undefined ? "none" : ans.pred) + " · gold " + gold]),
      ans.error ? h("div", { class: "error-text" }, ans.error) : null,
      h("pre", { class: "text answer" }, ans.response || "(no response)")
    ]);
  }
  function changedList(title, cls, items, cmp) {
    return h("div", { class: cls }, [h("h3", null, title + " (" + items.length + ")"),
      items.length ? h("div", null, items.map(function (it) {
        return h("details", { class: "item", "data-id": it.id }, [
          h("summary", null, [h("b", null, it.id), it.level !== null && it.level !== undefined ? " · level " + it.level : "", it.subject ? " · " + it.subject : "", " · gold " + it.gold, h("span", { class: "muted" }, " · " + it.question.slice(0, 90))]),
          h("div", { class: "text question" }, it.question),
          h("div", { class: "sides" }, [answerBox(cmp.a + " (A)", "side-a", it.a, it.gold), answerBox(cmp.b + " (B)", "side-b", it.b, it.gold)])
        ]);
      })) : note("none")]);
  }
  function deltaTable(buckets) {
    var names = Object.keys(buckets || {});
    if (!names.length) return null;
    return table(["group", "n", "A", "B", "delta (pts)", "A only", "B only", "McNemar p"], names.map(function (n) {
      var x = buckets[n]; return [n, x.n, pct(x.accuracy_a), pct(x.accuracy_b), (x.delta >= 0 ? "+" : "") + fix(100 * x.delta, 1), x.only_a, x.only_b, Number(x.mcnemar_p).toPrecision(3)];
    }));
  }
  function evaluationView() {
    var E = D.evaluation, out = [];
    if (!E.evals.length) return [section("Evaluation", note("No evaluation yet (eval/<name>/<benchmark>/)."))];
    out.push(section("Accuracy", [
      barChart({ title: "Accuracy with 95% Wilson intervals", labels: E.evals.map(function (e) { return e.name + " / " + e.benchmark; }), ymax: 1, yfmt: accFmt, ylabel: "accuracy", rotate: E.evals.length > 4,
        groups: [{ values: E.evals.map(function (e) { return e.accuracy; }), lo: E.evals.map(function (e) { return e.ci95 ? e.ci95[0] : e.accuracy; }), hi: E.evals.map(function (e) { return e.ci95 ? e.ci95[1] : e.accuracy; }), n: E.evals.map(function (e) { return e.problems; }) }] }),
      table(["evaluation", "benchmark", "model", "accuracy", "95% CI", "problems", "counted as wrong", "folder"], E.evals.map(function (e) {
        var c = e.counts || {};
        return [e.name + (e.partial ? " (running)" : ""), e.benchmark, e.model || "–", pct(e.accuracy), ciText(e.ci95), e.problems,
          "unparsable " + (c.unparsable || 0) + ", time-outs " + (c.grader_timeouts || 0) + ", request errors " + (c.request_errors || 0), e.folder];
      }), { class: "grid", id: "eval-table" })
    ]));
    var charts = [];
    E.evals.forEach(function (e) {
      charts.push(bucketChart(e.name + " / " + e.benchmark + " by level", e.by_level, "level"), bucketChart(e.name + " / " + e.benchmark + " by subject", e.by_subject, "subject"));
    });
    charts = charts.filter(Boolean);
    if (charts.length) out.push(section("By level and subject", h("div", { class: "charts" }, charts)));
    E.compares.forEach(function (cmp) {
      var o = cmp.overall;
      out.push(section("Before vs after: " + cmp.b + " against " + cmp.a + " on " + cmp.benchmark, [
        h("p", { class: "muted small" }, "from " + cmp.source + "; paired on " + num(o.n) + " problems both answered"),
        h("div", { class: "two" }, [
          h("table", { class: "grid contingency" }, [
            h("thead", null, h("tr", null, [h("th", null, ""), h("th", null, cmp.b + " right"), h("th", null, cmp.b + " wrong")])),
            h("tbody", null, [
              h("tr", null, [h("th", null, cmp.a + " right"), h("td", { class: "num" }, num(o.both_correct)), h("td", { class: "num", "data-count": "broken" }, num(o.only_a))]),
              h("tr", null, [h("th", null, cmp.a + " wrong"), h("td", { class: "num", "data-count": "fixed" }, num(o.only_b)), h("td", { class: "num" }, num(o.neither))])
            ])
          ]),
          h("div", { class: "compare-stats" }, [
            h("div", null, [h("b", null, cmp.a + " (A): "), pct(o.accuracy_a) + " (95% CI " + ciText(o.ci95_a) + ")"]),
            h("div", null, [h("b", null, cmp.b + " (B): "), pct(o.accuracy_b) + " (95% CI " + ciText(o.ci95_b) + ")"]),
            h("div", null, [h("b", null, "change: "), (o.delta >= 0 ? "+" : "") + fix(100 * o.delta, 1) + " points"]),
            h("div", { class: "mcnemar" }, [h("b", null, "exact McNemar p = "), Number(o.mcnemar_p).toPrecision(3), " on " + num(o.only_a + o.only_b) + " discordant problems"])
          ])
        ]),
        barChart({ title: "A and B by level", labels: ["overall"].concat(Object.keys(cmp.by_level)), ymax: 1, yfmt: accFmt, ylabel: "accuracy",
          groups: ["a", "b"].map(function (side, gi) {
            var buckets = [o].concat(Object.keys(cmp.by_level).map(function (k) { return cmp.by_level[k]; }));
            return { name: side === "a" ? cmp.a : cmp.b, color: gi ? "#3b6fb6" : "#9aa3ad", values: buckets.map(function (b) { return b["accuracy_" + side]; }), lo: buckets.map(function (b) { return b["ci95_" + side][0]; }), hi: buckets.map(function (b) { return b["ci95_" + side][1]; }) };
          }) }),
        deltaTable(cmp.by_level), deltaTable(cmp.by_subject),
        h("div", { class: "two changed" }, [changedList("Fixed: wrong before, right after", "fixed-list", cmp.fixed, cmp), changedList("Broken: right before, wrong after", "broken-list", cmp.broken, cmp)])
      ], { class: "card compare" }));
    });
    return out;
  }

  // ---- routing ---------------------------------------------------------------------------------
  var VIEWS = { overview: overview, pairs: pairsView, collection: collectionView, training: trainingView, evaluation: evaluationView };
  var current = null;
  function route() {
    var hash = (location.hash || "#overview").slice(1), parts = hash.split("/"), tab = VIEWS[parts[0]] ? parts[0] : "overview";
    if (tab === "pairs" && parts[1] !== undefined && parts[1] !== "") P.selected = Number(parts[1]);
    if (tab === current && tab === "pairs") { if (P.selected >= 0) openPair(P.selected); return; }
    current = tab;
    document.querySelectorAll("#tabs a").forEach(function (a) { a.classList.toggle("active", a.getAttribute("data-tab") === tab); });
    var main = clear(document.getElementById("main"));
    add(main, VIEWS[tab]());
    if (tab === "pairs") { onFilter(); if (P.selected >= 0) openPair(P.selected); }
  }
  header();
  window.addEventListener("hashchange", route);
  route();
  MARKS.firstRenderMs = performance.now();
  document.body.setAttribute("data-ready", "1");
})();
