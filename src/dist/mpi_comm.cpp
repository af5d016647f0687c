// MPI implementation of Communicator. Collectives are non-blocking calls polled against a deadline:
// when another rank dies or hangs, this rank reports which collective timed out and aborts the job
// instead of waiting forever.
#include <fmt/format.h>
// The C API only: OpenMPI's deprecated C++ bindings would need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <deque>
#include <vector>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"

namespace sky {

namespace {

double g_timeout_s = 600.0;
bool g_throw = false;
bool g_mpi = false;

class MpiComm : public Communicator {
 public:
  explicit MpiComm(MPI_Comm c) : c_(c) {
    MPI_Comm_rank(c_, &rank_);
    MPI_Comm_size(c_, &size_);
  }
  ~MpiComm() override {
    int fin0 = 0;
    MPI_Finalized(&fin0);
    if (!fin0) wait_sends();
    if (c_ != MPI_COMM_WORLD) {
      int fin = 0;
      MPI_Finalized(&fin);
      if (!fin) MPI_Comm_free(&c_);
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(float* d, size_t n) override {
    if (size_ > 1 && n >= kRingMin) {
      std::vector<size_t> counts(size_, n / size_);
      counts.back() += n % size_;
      // In place: chunk rank_ of d is last read in the step that writes its sum, element by element.
      ring(d, counts, d + size_t(rank_) * (n / size_), d);
      return;
    }
    MPI_Request r;
    MPI_Iallreduce(MPI_IN_PLACE, d, count(n), MPI_FLOAT, MPI_SUM, c_, &r);
    wait(r, "all-reduce");
  }
  void all_reduce_sum(double* d, size_t n) override {
    MPI_Request r;
    MPI_Iallreduce(MPI_IN_PLACE, d, count(n), MPI_DOUBLE, MPI_SUM, c_, &r);
    wait(r, "all-reduce");
  }
  void all_gather(const float* send, float* recv, size_t n) override {
    MPI_Request r;
    MPI_Iallgather(send, count(n), MPI_FLOAT, recv, count(n), MPI_FLOAT, c_, &r);
    wait(r, "all-gather");
  }
  void all_gather_in_place(float* buf, const std::vector<size_t>& counts) override {
    size_t total = 0;
    for (size_t c : counts) total += c;
    if (size_ > 1 && total >= kRingMin) return ring_gather(buf, counts);
    std::vector<int> c(counts.begin(), counts.end()), displ(size_, 0);
    for (int q = 1; q < size_; q++) displ[q] = displ[q - 1] + c[q - 1];
    MPI_Request r;
    MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, buf, c.data(), displ.data(), MPI_FLOAT, c_, &r);
    wait(r, "all-gather");
  }
  void reduce_scatter_sum(const float* send, float* recv, const std::vector<size_t>& counts) override {
    size_t total = 0, before = 0;
    for (int q = 0; q < size_; q++) (q < rank_ ? before : total) += counts[q];
    total += before;
    if (size_ > 1 && total >= kRingMin) {
      ring(send, counts, recv, nullptr);
      return;
    }
    std::vector<int> c(counts.begin(), counts.end());
    MPI_Request r;
    MPI_Ireduce_scatter(send, recv, c.data(), MPI_FLOAT, MPI_SUM, c_, &r);
    wait(r, "reduce-scatter");
  }
  void all_to_all_v(const float* send, const std::vector<size_t>& sc, float* recv,
                    const std::vector<size_t>& rc) override {
    std::vector<int> s(sc.begin(), sc.end()), rcv(rc.begin(), rc.end()), sd(size_), rd(size_);
    for (int i = 1; i < size_; i++) {
      sd[i] = sd[i - 1] + s[i - 1];
      rd[i] = rd[i - 1] + rcv[i - 1];
    }
    MPI_Request r;
    MPI_Ialltoallv(send, s.data(), sd.data(), MPI_FLOAT, recv, rcv.data(), rd.data(), MPI_FLOAT, c_, &r);
    wait(r, "all-to-all");
  }
  void send(const float* d, size_t n, int dst, int tag) override {
    for (int done = 1; done && !pending_.empty();) {  // drop buffers of sends that have completed
      MPI_Test(&pending_.front().req, &done, MPI_STATUS_IGNORE);
      if (done) pending_.pop_front();
    }
    pending_.push_back({MPI_REQUEST_NULL, std::vector<float>(d, d + n), dst});
    Pending& p = pending_.back();
    MPI_Isend(p.data.data(), count(n), MPI_FLOAT, dst, tag, c_, &p.req);
  }
  void wait_sends() override {
    while (!pending_.empty()) {
      wait(pending_.front().req, fmt::format("send to rank {}", pending_.front().dst).c_str());
      pending_.pop_front();
    }
  }
  void recv(float* d, size_t n, int src, int tag) override {
    MPI_Request r;
    MPI_Irecv(d, count(n), MPI_FLOAT, src, tag, c_, &r);
    wait(r, fmt::format("receive from rank {}", src).c_str());
  }
  void barrier() override {
    wait_sends();
    MPI_Request r;
    MPI_Ibarrier(c_, &r);
    wait(r, "barrier");
  }
  void broadcast(void* d, size_t bytes, int root) override {
    MPI_Request r;
    MPI_Ibcast(d, count(bytes), MPI_BYTE, root, c_, &r);
    wait(r, "broadcast");
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm nc;
    MPI_Comm_split(c_, color, key, &nc);
    return std::make_unique<MpiComm>(nc);
  }

 private:
  // Large float all-reduces and reduce-scatters run as a ring of point-to-point transfers: OpenMPI's
  // non-blocking collectives (which the timeouts need) reach about half the bandwidth of its
  // point-to-point path on shared memory (skymoe bench comm). Reduce-scatter: in step s rank r sends
  // its partial sum of chunk (r - s - 1) to the next rank and adds the previous rank's chunk
  // (r - s - 2) into its own, so after size - 1 steps it holds the whole sum of chunk r; the
  // all-gather half then passes the finished chunks around the ring. Every rank ends with the same
  // values, each chunk summed in one fixed order.
  static constexpr size_t kRingMin = size_t(1) << 18;  // floats
  // Sums `in` over the ranks chunk by chunk and writes chunk rank_ of the sum to `mine`; with `all`,
  // then passes the finished chunks around so `all` (which may be `in`) gets every sum.
  void ring(const float* in, const std::vector<size_t>& counts, float* mine, float* all) {
    const int n = size_, next = (rank_ + 1) % n, prev = (rank_ + n - 1) % n;
    std::vector<size_t> off(n + 1, 0);
    for (int q = 0; q < n; q++) off[q + 1] = off[q] + counts[q];
    const size_t biggest = *std::max_element(counts.begin(), counts.end());
    // The partial sum being forwarded and what arrives; kept between calls (no page faults per call).
    if (acc_.size() < biggest) acc_.resize(biggest);
    if (tmp_.size() < biggest) tmp_.resize(biggest);
    float *acc = acc_.data(), *tmp = tmp_.data();
    auto chunk = [&](int i) { return ((i % n) + n) % n; };
    auto exchange = [&](const float* send, int sc, float* into, int rc, int tag) {
      MPI_Request rs, rr;
      MPI_Irecv(into, count(counts[rc]), MPI_FLOAT, prev, tag, c_, &rr);
      MPI_Isend(send, count(counts[sc]), MPI_FLOAT, next, tag, c_, &rs);
      wait(rr, "all-reduce (ring receive)");
      wait(rs, "all-reduce (ring send)");
    };
    for (int s = 0; s < n - 1; s++) {
      const int sc = chunk(rank_ - s - 1), rc = chunk(rank_ - s - 2);
      exchange(s == 0 ? in + off[sc] : acc, sc, tmp, rc, kRingTag + s);
      const float* own = in + off[rc];
      float* dst = s == n - 2 ? mine : acc;  // the last chunk received is this rank's
      const size_t m = counts[rc];
      for (size_t i = 0; i < m; i++) dst[i] = own[i] + tmp[i];
    }
    if (all) ring_gather(all, counts);
  }
  // Rank r's chunk of `all` travels around the ring: in step s each rank forwards the chunk it got
  // in step s - 1 (its own first).
  void ring_gather(float* all, const std::vector<size_t>& counts) {
    const int n = size_, next = (rank_ + 1) % n, prev = (rank_ + n - 1) % n;
    std::vector<size_t> off(n + 1, 0);
    for (int q = 0; q < n; q++) off[q + 1] = off[q] + counts[q];
    auto chunk = [&](int i) { return ((i % n) + n) % n; };
    for (int s = 0; s < n - 1; s++) {
      const int sc = chunk(rank_ - s), rc = chunk(rank_ - s - 1);
      MPI_Request rs, rr;
      MPI_Irecv(all + off[rc], count(counts[rc]), MPI_FLOAT, prev, kRingTag + n + s, c_, &rr);
      MPI_Isend(all + off[sc], count(counts[sc]), MPI_FLOAT, next, kRingTag + n + s, c_, &rs);
      wait(rr, "all-gather (ring receive)");
      wait(rs, "all-gather (ring send)");
    }
  }
  static constexpr int kRingTag = 0x5a000;
  std::vector<float> acc_, tmp_;

  static int count(size_t n) {
    SKY_CHECK(n <= size_t(INT32_MAX), "message of {} elements is too large for one MPI call", n);
    return int(n);
  }
  void wait(MPI_Request& r, const char* what) {
    auto t0 = std::chrono::steady_clock::now();
    int done = 0;
    for (;;) {
      MPI_Test(&r, &done, MPI_STATUS_IGNORE);
      if (done) return;
      double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (el > g_timeout_s) {
        int wr;
        MPI_Comm_rank(MPI_COMM_WORLD, &wr);
        std::string msg = fmt::format("rank {}: {} did not complete within {:.0f} s; another rank probably failed", wr,
                                      what, g_timeout_s);
        if (g_throw) throw CommTimeout(msg);
        abort_job(msg);
      }
      // Non-blocking collectives only move data inside MPI_Test, so sleeping between tests throttles a
      // large transfer (measured: a 1.2 GB all-reduce took ~2 s instead of ~0.3 s). Poll without
      // sleeping, yielding the core to any other runnable rank (ranks often share cores here), and
      // only start sleeping after a long wait (e.g. a follower rank waiting for requests).
      if (el < 2.0) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  struct Pending {
    MPI_Request req;
    std::vector<float> data;  // kept alive until the send completes
    int dst;
  };
  MPI_Comm c_;
  int rank_ = 0, size_ = 1;
  std::deque<Pending> pending_;  // deque: push_back keeps earlier elements in place
};

}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

void set_collective_timeout(double s, bool throw_on_timeout) {
  g_timeout_s = s;
  g_throw = throw_on_timeout;
}

Communicator& world_comm() {
  static std::unique_ptr<Communicator> w = [] {
    if (!launched_by_mpi()) return make_self_comm();
    int provided;
    // Serialized: a server makes its MPI calls from its engine thread, not the thread that started MPI.
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    g_mpi = true;
    std::unique_ptr<Communicator> c = std::make_unique<MpiComm>(MPI_COMM_WORLD);
    return c;
  }();
  return *w;
}

void abort_job(const std::string& message, int code) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  if (g_mpi) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void finalize_comm() {
  if (!g_mpi) return;
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

}  // namespace sky
