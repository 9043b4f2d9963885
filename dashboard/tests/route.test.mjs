// Unit tests of src/route.js: dagre's edge routes as cytoscape segment weights and distances.
// Run: npm test (node --test).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { routeSegments, weightDistance, pointAt } from '../src/route.js';

const close = (a, b, what, eps = 1e-6) => assert.ok(Math.abs(a - b) < eps, `${what}: ${a} vs ${b}`);

/** The points cytoscape draws for a route (its findSegmentsPoints, edge-distances node-position). */
function drawn(s, t, { weights, distances }) {
  // cytoscape: midpoint = s·(1 − w) + t·w; point = midpoint + vectorNormInverse·d with
  // vectorNormInverse = (−vectorNorm.y, vectorNorm.x), vectorNorm the unit vector s → t.
  const l = Math.hypot(t.x - s.x, t.y - s.y);
  const n = { x: -(t.y - s.y) / l, y: (t.x - s.x) / l };
  return weights.map((w, i) => ({ x: s.x * (1 - w) + t.x * w + n.x * distances[i], y: s.y * (1 - w) + t.y * w + n.y * distances[i] }));
}

test('a straight route gives no bends', () => {
  const s = { x: 0, y: 0 };
  const t = { x: 400, y: 0 };
  // dagre: border point, dummies along the way (the label's among them), border point
  const pts = [{ x: 85, y: 0 }, { x: 120, y: 0 }, { x: 200, y: 0 }, { x: 280, y: 0 }, { x: 315, y: 0 }];
  assert.deepEqual(routeSegments(s, t, pts, { x: 200, y: 0 }), { weights: [], distances: [] });
  // diagonal, with rounding noise below the tolerance
  const d = { x: 300, y: 400 };
  const diag = [{ x: 30, y: 40 }, { x: 90, y: 120.4 }, { x: 150, y: 199.6 }, { x: 270, y: 360 }];
  assert.deepEqual(routeSegments(s, d, diag, { x: 150, y: 199.6 }), { weights: [], distances: [] });
  // no points between the borders, or no points at all
  assert.deepEqual(routeSegments(s, t, [{ x: 85, y: 0 }, { x: 315, y: 0 }]), { weights: [], distances: [] });
  assert.deepEqual(routeSegments(s, t, undefined), { weights: [], distances: [] });
});

test('a bend below the line has a positive distance, above a negative one (left to right)', () => {
  const s = { x: 0, y: 0 };
  const t = { x: 400, y: 0 };
  // model coordinates: y grows downwards
  const below = routeSegments(s, t, [{ x: 50, y: 20 }, { x: 200, y: 60 }, { x: 350, y: 20 }], { x: 200, y: 60 });
  assert.equal(below.weights.length, 1);
  close(below.weights[0], 0.5, 'weight');
  close(below.distances[0], 60, 'distance below');
  const above = routeSegments(s, t, [{ x: 50, y: -20 }, { x: 200, y: -60 }, { x: 350, y: -20 }], { x: 200, y: -60 });
  close(above.distances[0], -60, 'distance above');
  // cytoscape draws the bend where dagre put it
  assert.deepEqual(drawn(s, t, above).map((p) => [Math.round(p.x), Math.round(p.y)]), [[200, -60]]);
});

test('the sign follows the edge direction (right to left, the normal flips)', () => {
  const s = { x: 400, y: 0 };
  const t = { x: 0, y: 0 };
  const r = routeSegments(s, t, [{ x: 350, y: -20 }, { x: 200, y: -60 }, { x: 50, y: -20 }], { x: 200, y: -60 });
  close(r.distances[0], 60, 'distance above a right-to-left edge');
  const p = drawn(s, t, r)[0];
  close(p.x, 200, 'x');
  close(p.y, -60, 'y');
});

test('weights are in (0, 1) for points between the ends, and the route is drawn as dagre routed it', () => {
  // order -> bank around appcard: up, along the top, down (dagre points incl. dummies)
  const s = { x: 121, y: 300 };
  const t = { x: 2131, y: 330 };
  const pts = [
    { x: 160, y: 263 }, // border of the source
    { x: 226, y: 75 },
    { x: 364, y: 75 },
    { x: 650, y: 75 },
    { x: 1126, y: 75 }, // label
    { x: 1640, y: 75 },
    { x: 2026, y: 75 },
    { x: 2101, y: 290 }, // border of the target
  ];
  const r = routeSegments(s, t, pts, { x: 1126, y: 75 });
  assert.equal(r.weights.length, r.distances.length);
  assert.equal(r.weights.length % 2, 1, 'an odd number of points: the label on the middle one');
  for (const w of r.weights) assert.ok(w > 0 && w < 1, `weight ${w}`);
  for (let i = 1; i < r.weights.length; i++) assert.ok(r.weights[i] > r.weights[i - 1], 'weights increase along the route');
  for (const d of r.distances) assert.ok(d < 0, 'the whole route is above the line between the centres');
  const p = drawn(s, t, r);
  const mid = p[(p.length - 1) / 2];
  close(mid.x, 1126, 'label x', 1e-6);
  close(mid.y, 75, 'label y', 1e-6);
  // the bends are kept, the dummies along straight runs are not
  const round = p.map((q) => [Math.round(q.x), Math.round(q.y)]);
  assert.deepEqual(round[0], [226, 75]);
  assert.deepEqual(round[round.length - 1], [2026, 75]);
  assert.equal(p.length, 3);
  // every drawn point lies on dagre's polyline
  for (const q of p) assert.ok(Math.abs(q.y - 75) < 1e-6);
});

test('the label point is padded into the middle when the bends are on one side', () => {
  // pg -> appcard: one bend right after the source, then straight to the target
  const s = { x: 607, y: 377 };
  const t = { x: 1126, y: 435 };
  const pts = [{ x: 674, y: 414 }, { x: 712, y: 435 }, { x: 850, y: 435 }, { x: 988, y: 435 }, { x: 1041, y: 435 }];
  const r = routeSegments(s, t, pts, { x: 850, y: 435 });
  assert.equal(r.weights.length, 3);
  const p = drawn(s, t, r);
  close(p[0].x, 712, 'bend x');
  close(p[0].y, 435, 'bend y');
  close(p[1].x, 850, 'label x');
  close(p[1].y, 435, 'label y');
  // the pad: on the route, just after the label
  close(p[2].y, 435, 'pad y');
  assert.ok(p[2].x > 850 && p[2].x <= 852.000001, `pad x ${p[2].x}`);
  // and the other way round: bend near the target
  const r2 = routeSegments(t, s, [{ x: 1041, y: 435 }, { x: 988, y: 435 }, { x: 850, y: 435 }, { x: 712, y: 435 }, { x: 674, y: 414 }], { x: 850, y: 435 });
  const p2 = drawn(t, s, r2);
  assert.equal(p2.length, 3);
  close(p2[1].x, 850, 'label x (reversed)');
  close(p2[2].x, 712, 'bend x (reversed)');
  assert.ok(p2[0].x >= 849.999999 && p2[0].x < 852.000001 && p2[0].x > 850, `pad x ${p2[0].x}`);
});

test('weightDistance and pointAt are inverse', () => {
  const s = { x: -30, y: 12 };
  const t = { x: 250, y: -140 };
  for (const p of [{ x: 0, y: 0 }, { x: 100, y: 300 }, { x: -80, y: -90 }, { x: 250, y: -140 }]) {
    const { w, d } = weightDistance(s, t, p);
    const q = pointAt(s, t, w, d);
    close(q.x, p.x, 'x');
    close(q.y, p.y, 'y');
    const c = drawn(s, t, { weights: [w], distances: [d] })[0];
    close(c.x, p.x, 'cytoscape x');
    close(c.y, p.y, 'cytoscape y');
  }
});
