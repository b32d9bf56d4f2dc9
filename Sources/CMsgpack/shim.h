#ifndef PLUGBOARD_CMSGPACK_SHIM_H
#define PLUGBOARD_CMSGPACK_SHIM_H
#include <msgpack.h>
#endif
