// A tokenizer.model file (SentencePiece's serialized ModelProto), through the shared tokenizer
// harness (tokenizer_harness.h). SentencePiece itself is not instrumented (coverage guides only our
// wrapper), but a crash or abort inside it on a model file is a finding all the same: we must
// refuse such a file first.
#include "tokenizer_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { return fuzz::tokenizer_file(data, size); }
