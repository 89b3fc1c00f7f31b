// A plotly chart that updates in place (Plotly.react), for the Train page's live figures.
//
// st.plotly_chart mounts a new chart whenever its figure changes, and a live run changes every
// figure on every snapshot: the browser rebuilt six charts (a WebGL context among them) for
// each redraw. This component keeps one chart per key and hands it the new figure, and plotly
// redraws only what changed. It looks like st.plotly_chart: the same Streamlit theme (the
// layout of Streamlit's CustomTheme.tsx, coloured from the page's --st-* variables), the same
// toolbar, and on a selectable chart the same click selection, reported as "selection".
// See pages/live_chart.py.

// Streamlit's greys (gray70, gray30, gray90 of its palette) on light and dark backgrounds.
const GREYS = {
  light: { text: "#808495", grid: "#e6eaf1", legend: "#262730" },
  dark: { text: "#e6eaf1", grid: "#31333F", legend: "#fafafa" },
};
const CONFIG = {
  displaylogo: false,
  displayModeBar: "hover",
  modeBarButtonsToRemove: ["lasso2d", "select2d", "sendChartToCloud"],
  responsive: true,
};

// A chart out of view (below the fold, in a closed expander or tab) draws nothing: its newest
// figure waits and is drawn when the chart comes within NEAR of the viewport. While a run
// trains, the page redraws every figure every few seconds, and each draw is CPU taken from the
// training when the browser shares its cores (a screen shows two or four of the six charts).
const NEAR = "400px";
let observer;

function visibility() {
  observer ??= new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        const chart = entry.target;
        chart.dmlVisible = entry.isIntersecting;
        if (chart.dmlVisible && chart.dmlWaiting) {
          const draw = chart.dmlWaiting;
          chart.dmlWaiting = undefined;
          draw();
        }
      }
    },
    { rootMargin: NEAR, scrollMargin: NEAR }, // scrollMargin: Streamlit's main area scrolls
  );
  return observer;
}

// Draw now if the chart is in view, else when it comes into view (the newest figure only).
// A chart not reported yet counts as out of view: its first report comes with the next frame.
function drawWhenVisible(chart, draw) {
  if (chart.dmlVisible) {
    chart.dmlWaiting = undefined;
    draw();
  } else {
    chart.dmlWaiting = draw;
    visibility().observe(chart); // observing a chart observed already changes nothing
  }
}

// The plotly package's plotly.js, loaded once per page and kept to this component: Streamlit's
// own (another version) may already be window.Plotly, from an st.plotly_chart drawn before,
// and stays so.
function loadPlotly(url) {
  if (!window.__dmlPlotly) {
    window.__dmlPlotly = new Promise((resolve, reject) => {
      const previous = window.Plotly;
      const script = document.createElement("script");
      script.src = url;
      script.onload = () => {
        const ours = window.Plotly;
        if (previous !== undefined) window.Plotly = previous;
        resolve(ours);
      };
      script.onerror = () => {
        window.__dmlPlotly = undefined;
        reject(new Error(`plotly.js did not load from ${url}`));
      };
      document.head.appendChild(script);
    });
  }
  return window.__dmlPlotly;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// lodash's merge, as Streamlit applies its theme: source values win, objects merge deeply.
function merge(target, source) {
  for (const [key, value] of Object.entries(source)) {
    if (isObject(value)) {
      if (!isObject(target[key])) target[key] = {};
      merge(target[key], value);
    } else {
      target[key] = value;
    }
  }
  return target;
}

function rgbOf(color) {
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = color || "#ffffff";
  const hex = probe.fillStyle; // normalised to #rrggbb
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function isLight(color) {
  const [r, g, b] = rgbOf(color);
  return 0.299 * r + 0.587 * g + 0.114 * b > 127;
}

// The figures draw reference lines, outlines and label text in near-black ink, and put labels
// on light boxes, as on paper. On a dark page that ink vanishes (the margin's line, the
// sphere's q(d)) and a label's light box hides its light text. There each paper ink takes its
// colour in the table Python hands over (dml_core.figures.dark.DARK_PAGE_INKS, as every other
// chart of the app), and a light box the page's background, at its opacity.
const LIGHT_BOX = /^rgba\(\s*255\s*,\s*255\s*,\s*255\s*,/;

function darkColor(key, value, inks, background) {
  if (Array.isArray(value)) return value.map((item) => darkColor(key, item, inks, background));
  if (typeof value !== "string") return value;
  const ink = inks[value.toLowerCase()];
  if (ink !== undefined) return ink;
  if (key === "bgcolor" && LIGHT_BOX.test(value)) {
    return value.replace(LIGHT_BOX, `rgba(${background.join(",")},`);
  }
  return value;
}

function forDarkPage(node, inks, background) {
  if (Array.isArray(node)) {
    for (const item of node) {
      if (item !== null && typeof item === "object") forDarkPage(item, inks, background);
    }
    return;
  }
  if (!isObject(node)) return;
  for (const [key, value] of Object.entries(node)) {
    if (key.endsWith("color")) node[key] = darkColor(key, value, inks, background);
    else if (value !== null && typeof value === "object") forDarkPage(value, inks, background);
  }
}

function streamlitTheme(element) {
  const css = getComputedStyle(element);
  const read = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const bg = read("--st-background-color", "#ffffff");
  const heading = read("--st-heading-color", read("--st-text-color", "#31333f"));
  const font = read("--st-font", '"Source Sans", sans-serif');
  const headingFont = read("--st-heading-font", font);
  const border = read("--st-border-color", "#dcd8d4");
  const g = GREYS[isLight(bg) ? "light" : "dark"];
  const axisTitle = { font: { color: g.text, size: 14 } };
  const ticks = { color: g.text, size: 12 };
  return {
    font: { color: g.text, family: font, size: 12, weight: 400 },
    title: {
      font: { family: headingFont, size: 16, color: heading },
      pad: { l: 4 },
      xanchor: "left",
      x: 0,
    },
    legend: {
      title: { font: { size: 12, color: g.text }, side: "top" },
      valign: "top",
      bordercolor: "transparent",
      borderwidth: 0,
      font: { size: 12, color: g.legend },
    },
    paper_bgcolor: bg,
    plot_bgcolor: bg,
    yaxis: {
      ticklabelposition: "outside",
      zerolinecolor: g.grid,
      title: { ...axisTitle, standoff: 24 },
      tickcolor: g.grid,
      tickfont: ticks,
      gridcolor: g.grid,
      minor: { gridcolor: g.grid },
      automargin: true,
    },
    xaxis: {
      zerolinecolor: g.grid,
      gridcolor: g.grid,
      showgrid: false,
      tickfont: ticks,
      tickcolor: g.grid,
      title: { ...axisTitle, standoff: 20 },
      minor: { gridcolor: g.grid },
      zeroline: false,
      automargin: true,
    },
    margin: { pad: 8, r: 0, l: 0 },
    hoverlabel: {
      bgcolor: bg,
      bordercolor: border,
      font: { color: g.text, family: font, size: 12 },
    },
  };
}

function themed(figure, theme, selectable, inks) {
  const layout = figure.layout || {};
  if (!isLight(theme.paper_bgcolor)) {
    const background = rgbOf(theme.paper_bgcolor);
    for (const part of [figure.data, layout.shapes, layout.annotations, layout.legend]) {
      forDarkPage(part, inks, background);
    }
  }
  if (!isObject(layout.template)) layout.template = {};
  if (!isObject(layout.template.layout)) layout.template.layout = {};
  merge(layout.template.layout, theme);
  if (isObject(layout.title) && layout.title.text) {
    layout.title.text = `<b>${layout.title.text}</b>`;
  }
  if (selectable) {
    layout.clickmode = "event+select";
    layout.hovermode = "closest";
  }
  figure.layout = layout;
  return figure;
}

// What Python reads back: the clicked or selected points, as st.plotly_chart reports them.
function selection(points) {
  return {
    points: (points || []).map((p) => ({
      curve_number: p.curveNumber,
      point_number: p.pointNumber,
      point_index: p.pointIndex,
      x: p.x,
      y: p.y,
      customdata: p.customdata,
    })),
  };
}

// Draw the figure on the chart of this key, unless it shows that figure in this theme already;
// out of view, once it comes into view. A chart taken off the page is purged (plotly's resize
// listener and a WebGL context would otherwise stay); one that fails to draw says so, and the
// next render tries again.
export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let chart = parentElement.querySelector(":scope > div.dml-live-chart");
  if (!chart) {
    chart = document.createElement("div");
    chart.className = "dml-live-chart";
    chart.style.width = "100%";
    parentElement.appendChild(chart);
  }
  chart.dmlSetState = setStateValue; // the handlers below use the newest
  const theme = streamlitTheme(parentElement);
  const drawn = data.spec + JSON.stringify(theme); // a new theme redraws the same figure
  const cleanup = () => {
    if (chart.isConnected) return;
    chart.dmlWaiting = undefined;
    if (observer) observer.unobserve(chart);
    if (window.__dmlPlotly) window.__dmlPlotly.then((P) => P.purge(chart));
  };
  if (chart.dmlDrawn === drawn) return cleanup;
  chart.dmlDrawn = drawn;
  chart.style.minHeight = `${data.height}px`; // the page keeps its layout while a chart waits
  const draw = () =>
    loadPlotly(data.plotly_url)
      .then((Plotly) => {
        if (chart.dmlDrawn !== drawn || !chart.isConnected) return; // newer figure, or gone
        const figure = themed(JSON.parse(data.spec), theme, data.selectable, data.inks);
        return Plotly.react(chart, figure.data, figure.layout, CONFIG).then(() => {
          if (data.selectable && !chart.dmlListening) {
            chart.dmlListening = true;
            const report = (points) => chart.dmlSetState("selection", selection(points));
            chart.on("plotly_selected", (event) => report(event && event.points));
            chart.on("plotly_deselect", () => report([]));
          }
        });
      })
      .catch((error) => {
        chart.dmlDrawn = undefined; // the next render tries again
        chart.textContent = `This chart could not be drawn: ${error.message || error}`;
      });
  drawWhenVisible(chart, draw);
  return cleanup;
}
