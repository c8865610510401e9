/* tessera.h - the whole public API: include this one header. */
#ifndef TESSERA_H
#define TESSERA_H

#include "tessera/core.h"
#include "tessera/graph.h"
#include "tessera/backend.h"
#include "tessera/io.h"
#include "tessera/data.h"
#include "tessera/model.h"
#include "tessera/train.h"

#endif
