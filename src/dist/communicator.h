#pragma once
// All inter-process traffic goes through this interface (DESIGN.md section 4): MPI between CPU
// processes now, NCCL between GPUs later. Groups are derived once (split) and passed explicitly.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace sky {

// A collective that timed out, thrown instead of aborting the job when set_collective_timeout was
// told so: a server first answers its clients (503), then ends the job itself.
struct CommTimeout : Error {
  using Error::Error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  virtual void all_reduce_sum(double* data, size_t n) = 0;
  // recv [size * n] = every rank's send [n], in rank order.
  virtual void all_gather(const float* send, float* recv, size_t n) = 0;
  // buf holds rank r's part (counts[r] floats, parts in rank order) at its place; afterwards every
  // part everywhere.
  virtual void all_gather_in_place(float* buf, const std::vector<size_t>& counts) = 0;
  // recv [counts[rank]] = sum over ranks of their send [sum(counts)] restricted to this rank's part.
  virtual void reduce_scatter_sum(const float* send, float* recv, const std::vector<size_t>& counts) = 0;
  // Variable all-to-all: send_counts[r] floats to rank r (packed in rank order), receive likewise.
  virtual void all_to_all_v(const float* send, const std::vector<size_t>& send_counts, float* recv,
                            const std::vector<size_t>& recv_counts) = 0;
  // send returns at once (the data is copied): pipeline stages send forward while their neighbour
  // sends backward, which would deadlock with blocking sends. wait_sends completes them all.
  virtual void send(const float* data, size_t n, int dst, int tag) = 0;
  virtual void wait_sends() {}
  virtual void recv(float* data, size_t n, int src, int tag) = 0;
  virtual void barrier() = 0;
  // data [bytes] on every rank = root's (inference: rank 0 sends each step's batch to the others).
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // Ranks with the same color form a group, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// A group of one: every collective is a copy or nothing.
std::unique_ptr<Communicator> make_self_comm();

// The world: MPI when this process was started by mpirun (and skymoe was built with MPI), else a
// group of one. Collectives give up after `timeout_s` seconds with a clear message and abort every
// rank, so a failed rank never leaves the others hanging.
Communicator& world_comm();
bool launched_by_mpi();
// throw_on_timeout: throw CommTimeout on the calling process instead of aborting every rank.
void set_collective_timeout(double seconds, bool throw_on_timeout = false);
// Ends the whole job with a message (MPI_Abort under MPI, exit otherwise).
[[noreturn]] void abort_job(const std::string& message, int code = 1);
void finalize_comm();

}  // namespace sky
