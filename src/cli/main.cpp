// moetron command-line entry point (scaffold; commands are added as they work).
#include <iostream>

int main() { std::cout << "moetron\n"; return 0; }
