// maxflow_peer.cpp - the reference side of the grid graph-cut checks: reads
// a binary 6-neighbour grid problem and prints the maximum flow that
// Debian's libmaxflow (Boykov and Kolmogorov's code, GPL) finds for it.
// Built and run only by plugins/crf/spec/grid_spec.lua and bench/crf.lua
// when libmaxflow-dev is installed; never linked into lumen.
//
// Input (little-endian): int64 D, H, W; then f64 arrays of D*H*W values in
// C order: U0 (cost of label 0), U1 (cost of label 1), and the weights of
// the edges from each voxel to its next neighbour along dims 0, 1 and 2
// (ignored past the end of a dim). Output: "flow <value> seconds <wall>
// cpu <cpu>" (graph building and max-flow).
#include <maxflow.h>
#include <chrono>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <vector>

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: maxflow_peer problem.bin\n");
    return 2;
  }
  std::FILE *f = std::fopen(argv[1], "rb");
  if (!f) {
    std::perror(argv[1]);
    return 1;
  }
  int64_t dims[3];
  if (std::fread(dims, sizeof dims[0], 3, f) != 3) return 1;
  const int64_t n = dims[0] * dims[1] * dims[2];
  std::vector<double> v(5 * n);
  if (std::fread(v.data(), sizeof(double), v.size(), f) != v.size()) {
    std::fprintf(stderr, "maxflow_peer: %s is truncated\n", argv[1]);
    return 1;
  }
  std::fclose(f);
  const double *u0 = v.data(), *u1 = u0 + n, *w[3] = { u1 + n, u1 + 2 * n, u1 + 3 * n };
  auto t0 = std::chrono::steady_clock::now();
  std::clock_t c0 = std::clock();
  maxflow::Graph_DDD g((int)n, (int)(3 * n));
  g.add_node((int)n);
  const int64_t stride[3] = { dims[1] * dims[2], dims[2], 1 };
  for (int64_t i = 0; i < n; i++) {
    // the sink side is label 1: the arc from the source is cut then
    g.add_tweights((int)i, u1[i], u0[i]);
    int64_t c[3] = { i / stride[0], (i / stride[1]) % dims[1], i % dims[2] };
    for (int a = 0; a < 3; a++)
      if (c[a] + 1 < dims[a]) g.add_edge((int)i, (int)(i + stride[a]), w[a][i], w[a][i]);
  }
  double flow = g.maxflow();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double cpu = (double)(std::clock() - c0) / CLOCKS_PER_SEC;
  std::printf("flow %.17g seconds %.6f cpu %.6f\n", flow, secs, cpu);
  return 0;
}
