// A tokenizer.json (Hugging Face tokenizers' format: BPE model, normalizers, pre-tokenizers with
// PCRE2 regexes, decoders, added tokens), through the shared tokenizer harness
// (tokenizer_harness.h); its own seeds and dictionary steer it to the JSON format.
#include "tokenizer_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { return fuzz::tokenizer_file(data, size); }
