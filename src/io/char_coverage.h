#pragma once
// Picking SentencePiece's character_coverage for a vocabulary size. Every character inside the
// coverage needs its own piece, so a small vocabulary over mixed English/CJK text (the fortunes hold
// about 5,000 distinct characters) fails to train at the usual 0.9995. Characters left out are
// spelled with byte-fallback pieces instead.
#include <string>
#include <vector>

namespace sky {

// SentencePiece refuses coverages below this.
constexpr double kMinCoverage = 0.98;

// The largest coverage (at most `cap`) at which no more than `max_chars` distinct characters are
// required, from character counts over `text_files` (spaces counted as one character, line breaks
// not, as SentencePiece sees its input lines). Never below kMinCoverage: when even that needs more
// than max_chars characters, the count it needs goes to *needed (or, without `needed`, an error
// says it) -- before SentencePiece's internal error would.
double coverage_for_vocab(const std::vector<std::string>& text_files, int max_chars, double cap = 0.9995,
                          int* needed = nullptr);

}  // namespace sky
