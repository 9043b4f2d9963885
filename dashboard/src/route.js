// Edge routes: turns the polyline dagre computed for an edge into cytoscape's `segments` edge
// style. No DOM, no libraries (tests/unit.test.mjs imports it).
//
// With `'edge-distances': 'node-position'`, cytoscape puts segment point i of an edge at
//
//     S + w_i · (T − S) + d_i · n,    n = (−(T − S).y, (T − S).x) / |T − S|
//
// where S and T are the centres of the edge's source and target nodes, w_i its
// `segment-weights` and d_i its `segment-distances` (BRp.findSegmentsPoints and
// findMidptPtsEtc in cytoscape 3.35: midptPts = posPts, the node positions, and
// vectorNormInverse = (−vectorNorm.y, vectorNorm.x), oriented from the edge's own source to its
// target even when the pair is stored the other way round). Model coordinates have y growing
// downwards, so for an edge drawn left to right a positive distance is below the line.
//
// Cytoscape places the label of a segments edge on the middle segment point when there is an
// odd number of them (between the two middle ones otherwise): the route keeps dagre's label
// position as its middle point, so the label lands in the room dagre reserved for it.

/** Weight and distance of point p relative to the line from s to t (see above). */
export function weightDistance(s, t, p) {
  const dx = t.x - s.x;
  const dy = t.y - s.y;
  const l2 = dx * dx + dy * dy;
  const l = Math.sqrt(l2);
  const px = p.x - s.x;
  const py = p.y - s.y;
  return { w: (px * dx + py * dy) / l2, d: (dx * py - dy * px) / l };
}

/** The point cytoscape draws for weight w and distance d on the line from s to t (the inverse). */
export function pointAt(s, t, w, d) {
  const dx = t.x - s.x;
  const dy = t.y - s.y;
  const l = Math.hypot(dx, dy);
  return { x: s.x + w * dx - (d * dy) / l, y: s.y + w * dy + (d * dx) / l };
}

/** Distance of p from the line through a and b (from a when they coincide). */
function offLine(a, b, p) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const l = Math.hypot(dx, dy);
  if (l < 1e-9) return Math.hypot(p.x - a.x, p.y - a.y);
  return Math.abs(dx * (p.y - a.y) - dy * (p.x - a.x)) / l;
}

/**
 * Segment weights and distances that draw an edge along dagre's route.
 *
 * s, t: centres of the source and target nodes; points: dagre's `edge.points` after
 * `dagre.layout` (the first and last are where the route meets the two nodes' borders, the
 * others its bends and the dummy nodes it runs through); label: dagre's label centre
 * (`{x, y}` of the edge), or null. Points closer than `tolerance` to the straight line through
 * their neighbours are dropped, except the label's. Returns `{weights, distances}`: empty when
 * the whole route (label included) is the straight line from s to t, which cytoscape draws
 * as such anyway; otherwise an odd number of points with the label's in the middle (collinear
 * points 2 px beside the label are added to the shorter side as needed).
 */
export function routeSegments(s, t, points, label = null, tolerance = 1) {
  const inner = (points || []).slice(1, -1).map((p) => ({ x: p.x, y: p.y }));
  if (Math.hypot(t.x - s.x, t.y - s.y) < 1e-6) return { weights: [], distances: [] };
  // Where the label sits on the route: the point nearest to dagre's label centre.
  let anchor = -1;
  if (label && inner.length) {
    let best = Infinity;
    inner.forEach((p, i) => {
      const dist = Math.hypot(p.x - label.x, p.y - label.y);
      if (dist < best) [best, anchor] = [dist, i];
    });
    if (best > tolerance) {
      // Not on the route (dagre always puts a point there; be safe): insert it where it is
      // nearest to the route's order along s → t.
      const { w } = weightDistance(s, t, label);
      anchor = inner.findIndex((p) => weightDistance(s, t, p).w > w);
      if (anchor < 0) anchor = inner.length;
      inner.splice(anchor, 0, { x: label.x, y: label.y });
    }
  }
  // Drop the points that do not bend the route (the dummies along a straight run).
  const kept = [];
  let labelAt = -1;
  let prev = s;
  inner.forEach((p, i) => {
    const next = i + 1 < inner.length ? inner[i + 1] : t;
    if (i === anchor) {
      labelAt = kept.length;
      kept.push(p);
      prev = p;
    } else if (offLine(prev, next, p) > tolerance) {
      kept.push(p);
      prev = p;
    }
  });
  if (kept.every((p) => offLine(s, t, p) <= tolerance)) return { weights: [], distances: [] };
  if (labelAt >= 0) {
    // Pad the shorter side with points just beside the label, on the route, so that the
    // label's point is the middle one.
    const before = labelAt;
    const after = kept.length - 1 - labelAt;
    const n = Math.abs(before - after);
    const p = kept[labelAt];
    const toward = before < after ? (labelAt > 0 ? kept[labelAt - 1] : s) : labelAt + 1 < kept.length ? kept[labelAt + 1] : t;
    const len = Math.hypot(toward.x - p.x, toward.y - p.y);
    const step = Math.min(2, len / (n + 1)) / (len || 1);
    const pads = [];
    for (let j = 1; j <= n; j++) pads.push({ x: p.x + (toward.x - p.x) * step * j, y: p.y + (toward.y - p.y) * step * j });
    if (before < after) kept.splice(labelAt, 0, ...pads.reverse());
    else kept.splice(labelAt + 1, 0, ...pads);
  }
  const weights = [];
  const distances = [];
  for (const p of kept) {
    const { w, d } = weightDistance(s, t, p);
    weights.push(w);
    distances.push(d);
  }
  return { weights, distances };
}
