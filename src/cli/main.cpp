#include <cstdio>
int main() { std::puts("skymoe"); return 0; }
