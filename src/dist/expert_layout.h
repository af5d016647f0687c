#pragma once
// How the experts of an MoE model are spread over a process mesh (see dist/mesh.h).
#include <string>

namespace sky {

enum class ExpertLayout { None, EP, ETP, EDP };
const char* expert_layout_name(ExpertLayout e);
ExpertLayout parse_expert_layout(const std::string& s);  // none | ep | etp | edp, throws naming the value

}  // namespace sky
