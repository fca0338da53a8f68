/* SPDX-License-Identifier: MIT */
/* statemirrord.c: the process: arguments, config, wiring, signals, shutdown. */
#include <stdio.h>

int main(void)
{
	printf("statemirrord %s (skeleton)\n", SM_VERSION);
	return 0;
}
