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
  void reduce_scatter_sum(const float* send, float* recv, const std::vector<size_t>& counts) override {
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
  static int count(size_t n) {
    SKY_CHECK(n <= size_t(INT32_MAX), "message of {} elements is too large for one MPI call", n);
    return int(n);
  }
  void wait(MPI_Request& r, const char* what) {
    auto t0 = std::chrono::steady_clock::now();
    int done = 0;
    for (int spins = 0;; spins++) {
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
      // Spin briefly for latency, then yield the core (ranks often share cores on small machines).
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
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
