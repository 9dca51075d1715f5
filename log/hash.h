// xxHash, compiled into each user: XXH_INLINE_ALL makes its functions
// static (and renamed, so that no other inclusion collides), so hashing a
// short name is a few inlined instructions instead of a call through the
// shared library's PLT. Include this, not <xxhash.h>.
#pragma once

#define XXH_INLINE_ALL
#include <xxhash.h>
